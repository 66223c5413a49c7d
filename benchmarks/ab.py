"""Compare two builds of lstmx in one process, their calls alternating (an A/B test).

On a shared machine, speed drifts for minutes at a time: two builds timed one after the
other can differ by 20% for no reason of their own. Here both builds are imported into the
same process (B's copy renamed ``lstmxb``), and their calls alternate, A, B, A, B, ..., so any
slow phase falls on both alike. The verdict is the median over the pairs of B's time over A's:
below 1, B is faster. An A/A run (the same directory twice) gives 1.00 on a quiet machine.

Each directory holds an importable ``lstmx`` package: a virtual environment's site-packages,
or a copy of one with another build's ``_core*.so`` and ``_kernels_*.so`` dropped in::

    python benchmarks/ab.py OLD_SITE_PACKAGES NEW_SITE_PACKAGES --mode train b4-h256 b32-h256
    python benchmarks/ab.py A B --mode infer --seconds 10 all

Configurations are names from the standard grid (``python -m lstmx bench --help``) or ``all``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="directory with build A's lstmx package")
    ap.add_argument("b", help="directory with build B's lstmx package")
    ap.add_argument("configs", nargs="+", help="grid configurations, or 'all'")
    ap.add_argument("--mode", choices=("infer", "train"), default="infer",
                    help="infer: lstmx.lstm; train: lstm_train + lstm_backward (default infer)")
    ap.add_argument("--seconds", type=float, default=6.0, help="time per configuration")
    ap.add_argument("--threads", type=int, default=2, help="threads of both builds")
    args = ap.parse_args()
    for d in (args.a, args.b):
        if not os.path.isdir(os.path.join(d, "lstmx")):
            ap.error(f"{d}: no lstmx package in it")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(args.b, "lstmx"), os.path.join(tmp, "lstmxb"))
        sys.path[:0] = [args.a, tmp]
        import lstmx
        import lstmxb
        from lstmx import bench

        builds: tuple[Any, Any] = (lstmx, lstmxb)
        for m in builds:
            m.set_num_threads(args.threads)
        names = [c.name for c in bench.GRID] if args.configs == ["all"] else args.configs
        for name in names:
            inp = bench.make_inputs(bench.parse_config(name), np.dtype(np.float32))

            def call(m: Any) -> Callable[[], None]:
                if args.mode == "infer":
                    return lambda: m.lstm(*inp.args)
                return lambda: m.lstm_backward(m.lstm_train(*inp.args)[3], inp.dy)

            fns = [call(m) for m in builds]
            for f in fns:  # warm-up: pools, pages, caches
                f(), f()
            times: list[list[float]] = [[], []]
            end = time.perf_counter() + args.seconds
            while time.perf_counter() < end:
                for f, ts in zip(fns, times):
                    t0 = time.perf_counter()
                    f()
                    ts.append(time.perf_counter() - t0)
            ta, tb = np.array(times[0]), np.array(times[1])
            print(f"{name} {args.mode}: A {np.median(ta) * 1e3:.3f} ms, B "
                  f"{np.median(tb) * 1e3:.3f} ms, B/A {np.median(tb / ta):.3f} "
                  f"(median of {len(ta)} pairs)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
