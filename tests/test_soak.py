"""Soak: many calls of mixed sizes, with errors in between, leak neither memory nor references.

Marked ``soak``: CI runs it; skip it locally with ``python -m pytest -m "not soak"``.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable

import numpy as np
import pytest
from conftest import RECORD, make_case

import lstmx

CALLS = 10_000  # forward + backward pairs
WARM_UP = 1_000
MAX_RSS_GROWTH = 5 << 20  # bytes


def rss() -> int:
    """Resident set size of this process, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _calls() -> tuple[list[Callable[[], object]], list[np.ndarray]]:
    """One forward + backward per entry, of mixed sizes, dtypes, layouts and entry points (every
    fourth one raises instead), and the input arrays they use."""
    steps: list[Callable[[], object]] = []
    inputs: list[np.ndarray] = []
    sizes = [(1, 1, 1, 1), (5, 3, 4, 7), (2, 8, 16, 70), (0, 2, 3, 4), (3, 0, 2, 5)]
    for k, (T, B, I, H) in enumerate(sizes):
        for dt in (np.float32, np.float64):
            bf = bool(k % 2)
            c = make_case(T, B, I, H, dt, seed=k, batch_first=bf)
            inputs += list(c.values())

            def seq(c: dict[str, np.ndarray] = c, bf: bool = bf) -> object:
                y, hn, cn, tape = lstmx.lstm_train(**c, batch_first=bf)
                return lstmx.lstm_backward(tape, y, hn, cn)

            def cell(c: dict[str, np.ndarray] = c, x: np.ndarray = c["x"].reshape(-1, I)[:B]
                     ) -> object:
                h, cc, tape = lstmx.lstm_cell_train(x, c["w_ih"], c["w_hh"])
                return lstmx.lstm_cell_backward(tape, h, cc)

            def bad(c: dict[str, np.ndarray] = c, bf: bool = bf) -> object:
                with pytest.raises((TypeError, ValueError, MemoryError)):
                    lstmx.lstm_train(c["x"], c["w_ih"][:, :-1] if c["w_ih"].shape[1] else
                                     c["w_ih"].astype(np.int32), c["w_hh"])
                y, _, _, tape = lstmx.lstm_train(**c, batch_first=bf)
                with pytest.raises(ValueError):
                    lstmx.lstm_backward(tape, y[..., :-1] if y.shape[-1] else y[:0])
                return None

            steps += [seq, cell, seq, bad]
    m = lstmx.LSTM(6, 9, seed=0)
    x = np.ones((4, 2, 6), np.float32)
    inputs.append(x)

    def layer() -> object:
        y, (hn, cn), tape = m.forward_train(x)
        return m.backward(tape, y, hn, cn)

    steps.append(layer)
    return steps, inputs


@pytest.mark.soak
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc (Linux)")
def test_soak_no_memory_or_reference_leaks() -> None:
    steps, inputs = _calls()
    refs = [sys.getrefcount(a) for a in inputs]
    threads = lstmx.get_num_threads()
    for k in range(WARM_UP):
        steps[k % len(steps)]()
    gc.collect()
    before = rss()
    for k in range(CALLS):
        if k % 500 == 0:  # one call in ten on two threads (slow on a busy machine)
            lstmx.set_num_threads(2 if k % 5000 == 0 else 1)
        steps[k % len(steps)]()
    lstmx.set_num_threads(threads)
    gc.collect()
    growth = rss() - before
    RECORD.set("soak calls (forward + backward, after warm-up)", CALLS)
    RECORD.set("soak RSS growth (limit 5 MiB)", f"{growth / 2**20:.2f} MiB")
    assert growth < MAX_RSS_GROWTH, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert [sys.getrefcount(a) for a in inputs] == refs
