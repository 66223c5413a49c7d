"""Benchmark lstmx against its peers: PyTorch, the NumPy reference, and the GEMM roofline.

For each configuration (input size ``I``, hidden size ``H``, batch ``B``, steps ``T``) and each
mode it times, in this one process, with the same thread count and the same inputs:

* ``infer``: a forward pass over the whole sequence, no workspace kept
  (:func:`lstmx.lstm`; ``torch.nn.LSTM`` under ``torch.inference_mode()``;
  :func:`lstmx.reference.lstm_forward`);
* ``train``: a training forward pass and backpropagation through time
  (:func:`lstmx.lstm_train` + :func:`lstmx.lstm_backward`; ``torch.nn.LSTM`` with
  ``requires_grad`` inputs + ``y.backward(dy)``; the reference's forward + backward).

It also measures the machine's matrix-multiply rate on the LSTM's own GEMM shape,
``[T*B, I+H] x [I+H, 4H]`` (``torch.mm``, or NumPy without torch), as a roofline: an LSTM
cannot beat one big GEMM of the same FLOP count, because its recurrent half is ``T`` small,
sequential GEMMs.

FLOPs counted: forward ``2*T*B*4H*(I+H)``, training three times that (forward, and two GEMMs
per weight in backward). Medians are reported, after one warm-up call per measurement.

Run it as ``python -m lstmx.bench`` or ``python benchmarks/bench_lstm.py``; ``--help`` lists
the options.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import lstmx

__all__ = ["BenchConfig", "GRID", "DEFAULT_CONFIGS", "Budget", "Timing", "Row", "measure", "run",
           "format_table", "machine_info", "main"]

MODES = ("infer", "train")
IMPLS = ("lstmx", "torch", "reference")

#: The reference (one NumPy step at a time) is timed only where ``T*B*H`` is at most this.
REFERENCE_MAX_TBH = 1_000_000
#: Warn about noisy timings when other processes use more than this many CPUs' worth.
BUSY_NOTE = 0.25


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark shape: ``x [T, B, I]`` through an LSTM with ``H`` hidden units."""

    name: str
    I: int  # noqa: E741 - the conventional name
    H: int
    B: int
    T: int

    def flops(self, mode: str) -> float:
        """FLOPs of one call: forward ``2*T*B*4H*(I+H)``; training three times that."""
        fwd = 2.0 * self.T * self.B * 4 * self.H * (self.I + self.H)
        return fwd if mode == "infer" else 3.0 * fwd

    @property
    def gemm_shape(self) -> tuple[int, int, int]:
        """``(M, K, N)`` of the roofline GEMM ``[T*B, I+H] x [I+H, 4H]``."""
        return self.T * self.B, self.I + self.H, 4 * self.H


GRID: tuple[BenchConfig, ...] = (
    BenchConfig("b1-h128", 128, 128, 1, 100),
    BenchConfig("b4-h256", 256, 256, 4, 150),
    BenchConfig("b4-h1024", 1024, 1024, 4, 25),
    BenchConfig("b16-h512", 512, 512, 16, 25),
    BenchConfig("b32-h256", 256, 256, 32, 100),
    BenchConfig("b64-h512", 512, 512, 64, 50),
    BenchConfig("b64-h1024", 1024, 1024, 64, 25),
)
DEFAULT_CONFIGS = "b1-h128,b32-h256,b64-h512"


# ---- timing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How long to time one measurement.

    With ``repeats`` set, exactly that many timed calls. Otherwise calls are repeated until at
    least ``min_reps`` calls *and* ``min_time`` seconds have been spent, but no more than
    ``max_reps`` calls, and no longer than ``max_time`` seconds once ``cap_reps`` calls are in
    (so a slow call is timed only a few times).
    """

    min_reps: int = 5
    min_time: float = 0.3
    max_reps: int = 200
    max_time: float = 2.0
    cap_reps: int = 3
    repeats: int | None = None

    def limited(self, max_reps: int, max_time: float, cap_reps: int) -> Budget:
        """A budget for a slow peer: at most ``max_reps`` calls, and only ``cap_reps`` once
        ``max_time`` seconds are spent."""
        reps = None if self.repeats is None else min(self.repeats, max_reps)
        return Budget(min(self.min_reps, max_reps), min(self.min_time, max_time),
                      min(self.max_reps, max_reps),
                      min(self.max_time, max_time), min(self.cap_reps, cap_reps), reps)


@dataclass
class Timing:
    """The timed calls of one measurement, in seconds."""

    times: list[float]
    #: CPUs' worth of time other processes used while this was measured (None: unknown).
    other_cpus: float | None = None

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return float(statistics.median(self.times))

    def summary(self, flops: float) -> dict[str, Any]:
        """Median, spread and rate, for the JSON output."""
        med = self.median
        return {"median_s": med, "min_s": min(self.times), "max_s": max(self.times),
                "reps": len(self.times), "gflops": flops / med / 1e9,
                "other_cpus": self.other_cpus, "times_s": self.times}


def measure(fn: Callable[[], object], budget: Budget) -> Timing:
    """Call ``fn`` once to warm up, then time calls of it with ``time.perf_counter``."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        n, elapsed = len(times), time.perf_counter() - start
        if budget.repeats is not None:
            if n >= budget.repeats:
                break
        elif (n >= budget.max_reps or (n >= budget.min_reps and elapsed >= budget.min_time)
              or (n >= budget.cap_reps and elapsed >= budget.max_time)):
            break
    return Timing(times)


# ---- the peers -----------------------------------------------------------------------------------


@dataclass
class Inputs:
    """One configuration's inputs, shared by every peer."""

    x: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    dy: np.ndarray


def make_inputs(cfg: BenchConfig, dtype: np.dtype[Any], seed: int = 0) -> Inputs:
    """Weights uniform in ``[-1/sqrt(H), 1/sqrt(H)]`` (PyTorch's init), ``x`` and ``dy`` normal."""
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(cfg.H)
    G = 4 * cfg.H

    def u(*shape: int) -> np.ndarray:
        return rng.uniform(-k, k, shape).astype(dtype)

    return Inputs(x=rng.standard_normal((cfg.T, cfg.B, cfg.I)).astype(dtype),
                  w_ih=u(G, cfg.I), w_hh=u(G, cfg.H), b_ih=u(G), b_hh=u(G),
                  dy=rng.standard_normal((cfg.T, cfg.B, cfg.H)).astype(dtype))


def lstmx_fns(inp: Inputs) -> dict[str, Callable[[], object]]:
    """lstmx's inference and training calls."""
    a = (inp.x, inp.w_ih, inp.w_hh, inp.b_ih, inp.b_hh)

    def infer() -> object:
        return lstmx.lstm(*a)

    def train() -> object:
        _, _, _, tape = lstmx.lstm_train(*a)
        return lstmx.lstm_backward(tape, inp.dy)

    return {"infer": infer, "train": train}


def reference_fns(inp: Inputs) -> dict[str, Callable[[], object]]:
    """The NumPy reference's inference and training calls."""
    a = (inp.x, inp.w_ih, inp.w_hh, inp.b_ih, inp.b_hh)

    def infer() -> object:
        return lstmx.reference.lstm_forward(*a)

    def train() -> object:
        cache = lstmx.reference.lstm_forward(*a)[3]
        return lstmx.reference.lstm_backward(cache, inp.dy)

    return {"infer": infer, "train": train}


@dataclass
class TorchPeer:
    """``torch.nn.LSTM`` with lstmx's weights loaded, and its inference and training calls."""

    module: Any
    x: Any
    xg: Any
    dy: Any
    torch: Any

    @classmethod
    def build(cls, torch: Any, cfg: BenchConfig, inp: Inputs) -> TorchPeer:
        """Copy ``inp``'s weights into a fresh ``torch.nn.LSTM`` (same layout, same gates)."""
        tdt = torch.float32 if inp.x.dtype == np.float32 else torch.float64
        mod = torch.nn.LSTM(cfg.I, cfg.H, dtype=tdt)
        with torch.no_grad():
            for name, arr in (("weight_ih_l0", inp.w_ih), ("weight_hh_l0", inp.w_hh),
                              ("bias_ih_l0", inp.b_ih), ("bias_hh_l0", inp.b_hh)):
                getattr(mod, name).copy_(torch.from_numpy(arr))
        x = torch.from_numpy(inp.x)
        return cls(mod, x, x.clone().requires_grad_(True), torch.from_numpy(inp.dy), torch)

    def infer(self) -> object:
        """Forward under ``torch.inference_mode()``."""
        with self.torch.inference_mode():
            return self.module(self.x)

    def train(self) -> object:
        """Forward with ``requires_grad`` input and weights, then ``y.backward(dy)``."""
        self.module.zero_grad(set_to_none=True)
        self.xg.grad = None
        y, _ = self.module(self.xg)
        y.backward(self.dy)
        return y

    def fns(self) -> dict[str, Callable[[], object]]:
        """The calls to time, by mode."""
        return {"infer": self.infer, "train": self.train}


def gemm_fn(torch: Any | None, cfg: BenchConfig, dtype: np.dtype[Any]) -> Callable[[], object]:
    """The roofline GEMM ``[T*B, I+H] x [I+H, 4H]`` in ``dtype`` (torch.mm, else NumPy)."""
    M, K, N = cfg.gemm_shape
    rng = np.random.default_rng(1)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        return lambda: torch.mm(ta, tb)
    return lambda: a @ b


def _rel_diff(a: Any, b: Any) -> float:
    """``max|a - b| / max(1, max|b|)``: the largest difference, relative to ``b``'s scale."""
    a = a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
    b = b.detach().numpy() if hasattr(b, "detach") else np.asarray(b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def agreement(inp: Inputs, tpeer: TorchPeer | None, with_reference: bool) -> dict[str, float]:
    """How far lstmx's outputs and gradients are from its peers' (see :func:`_rel_diff`)."""
    y, _, _, tape = lstmx.lstm_train(inp.x, inp.w_ih, inp.w_hh, inp.b_ih, inp.b_hh)
    g = lstmx.lstm_backward(tape, inp.dy)
    y_inf = lstmx.lstm(inp.x, inp.w_ih, inp.w_hh, inp.b_ih, inp.b_hh)[0]
    out = {"infer_vs_train_y": _rel_diff(y, y_inf)}
    if with_reference:
        ry, _, _, cache = lstmx.reference.lstm_forward(inp.x, inp.w_ih, inp.w_hh, inp.b_ih,
                                                       inp.b_hh)
        rg = lstmx.reference.lstm_backward(cache, inp.dy)
        out.update(reference_y=_rel_diff(y, ry), reference_dx=_rel_diff(g.dx, rg["dx"]),
                   reference_dw_ih=_rel_diff(g.dw_ih, rg["dw_ih"]),
                   reference_dw_hh=_rel_diff(g.dw_hh, rg["dw_hh"]))
    if tpeer is not None:
        ty = tpeer.train()
        mod, xg = tpeer.module, tpeer.xg
        out.update(torch_y=_rel_diff(y, ty), torch_dx=_rel_diff(g.dx, xg.grad),
                   torch_dw_ih=_rel_diff(g.dw_ih, mod.weight_ih_l0.grad),
                   torch_dw_hh=_rel_diff(g.dw_hh, mod.weight_hh_l0.grad),
                   torch_db=_rel_diff(g.db_ih, mod.bias_ih_l0.grad))
    return out


# ---- the run -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One (config, mode) line of the table."""

    config: BenchConfig
    mode: str
    flops: float
    timings: dict[str, Timing] = field(default_factory=dict)
    gemm_gflops: float | None = None
    gemm: Timing | None = None

    def ms(self, impl: str) -> float | None:
        """Median milliseconds of ``impl``, or ``None`` if it was not timed."""
        t = self.timings.get(impl)
        return None if t is None else t.median * 1e3

    def gflops(self, impl: str) -> float | None:
        """GFLOP/s of ``impl`` at its median time, or ``None``."""
        t = self.timings.get(impl)
        return None if t is None else self.flops / t.median / 1e9

    def speedup(self, peer: str) -> float | None:
        """``peer_time / lstmx_time`` (above 1: lstmx is faster), or ``None``."""
        a, b = self.timings.get("lstmx"), self.timings.get(peer)
        return None if a is None or b is None else b.median / a.median

    def pct_gemm(self) -> float | None:
        """lstmx's GFLOP/s as a percentage of the GEMM rate, or ``None``."""
        g = self.gflops("lstmx")
        return None if g is None or not self.gemm_gflops else 100.0 * g / self.gemm_gflops

    def to_json(self) -> dict[str, Any]:
        """Everything about this row, as plain JSON data."""
        return {"config": asdict(self.config), "mode": self.mode, "flops": self.flops,
                "impls": {k: t.summary(self.flops) for k, t in self.timings.items()},
                "gemm_gflops": self.gemm_gflops,
                "gemm": None if self.gemm is None else self.gemm.summary(2.0 * math.prod(
                    self.config.gemm_shape)),
                "speedup_vs_torch": self.speedup("torch"),
                "speedup_vs_reference": self.speedup("reference"),
                "pct_of_gemm": self.pct_gemm()}


class Progress:
    """A one-line-per-step progress log on stderr: ``[ 3/18] b32-h256 infer torch  12.3 ms``."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.width = len(str(total))

    def step(self, what: str, fn: Callable[[], Timing]) -> Timing:
        """Run one measurement, logging it before and after."""
        self.done += 1
        head = f"[{self.done:>{self.width}}/{self.total}] {what:<28}"
        if self.enabled:
            print(head, end="", file=sys.stderr, flush=True)
        meter = CpuMeter()
        t = fn()
        t.other_cpus = meter.read()
        if self.enabled:
            busy = "" if not _noisy(t) else f"  [other processes: {t.other_cpus:.2f} CPUs]"
            print(f" {t.median * 1e3:10.3f} ms  (n={len(t.times)}){busy}", file=sys.stderr,
                  flush=True)
        return t


def _noisy(t: Timing) -> bool:
    return t.other_cpus is not None and t.other_cpus > BUSY_NOTE


def _import_torch(enabled: bool) -> Any | None:
    if not enabled:
        return None
    try:
        import torch
    except ImportError as e:
        print(f"torch not available ({e}); skipping the torch peer", file=sys.stderr)
        return None
    return torch


def run(configs: Sequence[BenchConfig], *, dtype: np.dtype[Any], budget: Budget,
        torch: Any | None, with_reference: bool,
        progress: bool = True) -> tuple[list[Row], dict[str, dict[str, float]]]:
    """Time every peer on every config and mode; also check they agree.

    Returns the table rows and, per config, the largest differences found by
    :func:`agreement`.
    """
    ref_ok = {c.name: with_reference and c.T * c.B * c.H <= REFERENCE_MAX_TBH for c in configs}
    per_cfg = 1 + len(MODES) * (1 + (torch is not None))
    total = sum(per_cfg + len(MODES) * ref_ok[c.name] for c in configs)
    prog = Progress(total, progress)
    ref_budget = budget.limited(max_reps=3, max_time=1.0, cap_reps=2)
    rows: list[Row] = []
    checks: dict[str, dict[str, float]] = {}
    for cfg in configs:
        inp = make_inputs(cfg, dtype)
        gemm = prog.step(f"{cfg.name} gemm",
                         functools.partial(measure, gemm_fn(torch, cfg, dtype), budget))
        M, K, N = cfg.gemm_shape
        gemm_gflops = 2.0 * M * K * N / gemm.median / 1e9
        peers: dict[str, tuple[dict[str, Callable[[], object]], Budget]] = {
            "lstmx": (lstmx_fns(inp), budget)}
        tpeer = TorchPeer.build(torch, cfg, inp) if torch is not None else None
        if tpeer is not None:
            peers["torch"] = (tpeer.fns(), budget)
        if ref_ok[cfg.name]:
            peers["reference"] = (reference_fns(inp), ref_budget)
        checks[cfg.name] = agreement(inp, tpeer, ref_ok[cfg.name])
        for mode in MODES:
            row = Row(cfg, mode, cfg.flops(mode), gemm_gflops=gemm_gflops, gemm=gemm)
            for impl, (fns, b) in peers.items():
                fn = fns[mode]
                row.timings[impl] = prog.step(f"{cfg.name} {mode} {impl}",
                                              functools.partial(measure, fn, b))
            rows.append(row)
    return rows, checks


# ---- output --------------------------------------------------------------------------------------

COLUMNS: tuple[tuple[str, int], ...] = (
    ("config", 10), ("mode", 5), ("lstmx ms", 10), ("torch ms", 10), ("ref ms", 10),
    ("lstmx GF/s", 10), ("torch GF/s", 10), ("ref GF/s", 9), ("GEMM GF/s", 9),
    ("vs torch", 8), ("vs ref", 8), ("% GEMM", 7),
)


def _num(v: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if v is None else format(v, fmt) + suffix


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return format(v, ".3f" if v < 10 else ".2f" if v < 100 else ".1f")


def format_table(rows: Sequence[Row]) -> str:
    """The results as a fixed-width text table.

    ``vs torch`` and ``vs ref`` are speedups, the peer's time over lstmx's (above 1x: lstmx is
    faster); ``% GEMM`` is lstmx's GFLOP/s over the roofline GEMM's.
    """
    def line(cells: Sequence[str]) -> str:
        parts = [f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
                 for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS))]
        return "  ".join(parts).rstrip()

    out = [line([name for name, _ in COLUMNS])]
    out.append("-" * len(out[0]))
    for r in rows:
        out.append(line([
            r.config.name, r.mode, _ms(r.ms("lstmx")), _ms(r.ms("torch")),
            _ms(r.ms("reference")), _num(r.gflops("lstmx"), ".1f"),
            _num(r.gflops("torch"), ".1f"), _num(r.gflops("reference"), ".1f"),
            _num(r.gemm_gflops, ".1f"), _num(r.speedup("torch"), ".2f", "x"),
            _num(r.speedup("reference"), ".2f", "x"), _num(r.pct_gemm(), ".1f", "%"),
        ]))
    return "\n".join(out)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for ln in f:
                if ln.lower().startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _numpy_blas() -> str | None:
    """The BLAS NumPy was built against (the reference's matrix products run there)."""
    try:
        cfg: Any = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older NumPy, or a layout change: not worth failing for
        return None


def _cpu_seconds() -> tuple[float, float] | None:
    """``(machine busy CPU-seconds since boot, this process's CPU-seconds)``, or ``None``."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
        busy = sum(vals) - vals[3] - vals[4]  # all but idle and iowait
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    t = os.times()
    return busy / hz, t.user + t.system


class CpuMeter:
    """How many CPUs' worth of time *other* processes used between creation and :meth:`read`.

    Other processes competing for the cores make timings noisy (and, with spinning OpenMP
    threads, much slower); this detects it. Resolution is a clock tick (10 ms) per CPU, so
    intervals under ``min_wall`` seconds report ``None``.
    """

    def __init__(self, min_wall: float = 0.2) -> None:
        self.min_wall = min_wall
        self.t0 = time.perf_counter()
        self.c0 = _cpu_seconds()

    def read(self) -> float | None:
        """Other processes' CPU use since creation, in CPUs (0 = none, 1 = one busy core)."""
        wall = time.perf_counter() - self.t0
        c1 = _cpu_seconds()
        if self.c0 is None or c1 is None or wall < self.min_wall:
            return None
        other = (c1[0] - self.c0[0]) - (c1[1] - self.c0[1])
        return max(0.0, other / wall)


def busy_cpus(interval: float = 0.25) -> float | None:
    """CPUs' worth of time other processes use during ``interval`` seconds (sleeping here)."""
    meter = CpuMeter(min_wall=0.0)
    time.sleep(interval)
    return meter.read()


def machine_info(threads: int, torch: Any | None) -> dict[str, Any]:
    """Platform, CPU, thread count, lstmx's build configuration and peer versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "threads": threads,
        "lstmx_config": lstmx.config(), "numpy": np.__version__, "numpy_blas": _numpy_blas(),
        "torch": None if torch is None else torch.__version__,
    }
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    try:
        info["loadavg_1min"] = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not available on this platform
        pass
    return info


def _busy(info: dict[str, Any]) -> str:
    b = info.get("busy_cpus_before")
    return "load from other processes unknown" if b is None else \
        f"other processes using {b:.2f} CPUs at start"


def _header(info: dict[str, Any], dtype: np.dtype[Any], gemm_backend: str) -> str:
    cfg = info["lstmx_config"]
    isa = f"ISA {cfg['isa']}, " if "isa" in cfg else ""
    return (f"lstmx {cfg.get('version')} ({cfg.get('compiler')}, {isa}SIMD {cfg.get('simd')}, "
            f"Eigen {cfg.get('eigen')}, OpenMP {cfg.get('openmp')}); "
            f"torch {info['torch'] or 'n/a'}; numpy {info['numpy']}\n"
            f"{info['cpu_model']}, {info['cpu_count']} CPUs ({_busy(info)}); "
            f"threads {info['threads']}; dtype {dtype}; GEMM roofline via {gemm_backend}\n"
            f"medians; 'vs torch'/'vs ref' = peer time / lstmx time (>1x: lstmx faster); "
            f"'% GEMM' = lstmx GF/s / GEMM GF/s")


def _parse_configs(spec: str) -> list[BenchConfig]:
    by_name = {c.name: c for c in GRID}
    if spec.strip().lower() == "all":
        return list(GRID)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown config(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(by_name)} or 'all'")
    return [by_name[n] for n in names]


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    grid = "; ".join(f"{c.name}: I={c.I} H={c.H} B={c.B} T={c.T}" for c in GRID)
    p = argparse.ArgumentParser(
        prog="python -m lstmx.bench",
        description="Time lstmx's LSTM inference and training against torch.nn.LSTM, the "
                    "NumPy reference and the machine's GEMM rate.",
        epilog=f"Configs: {grid}. The reference is timed only where T*B*H <= "
               f"{REFERENCE_MAX_TBH:,}.")
    p.add_argument("--configs", type=_parse_configs, default=_parse_configs(DEFAULT_CONFIGS),
                   metavar="NAMES", help=f"comma-separated config names, or 'all' "
                                         f"(default: {DEFAULT_CONFIGS})")
    p.add_argument("--threads", type=_positive_int, default=2,
                   help="threads for lstmx and torch (default: 2)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="data type of every input (default: float32)")
    p.add_argument("--repeats", type=_positive_int, default=None,
                   help="timed calls per measurement (default: adaptive, at least 5 calls and "
                        "0.3 s, at most ~2 s once 3 calls are in; the reference at most 3)")
    p.add_argument("--quick", action="store_true", help="fewer calls per measurement: a fast, "
                                                        "rough run")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write every number and the machine's details to PATH as JSON")
    p.add_argument("--no-torch", action="store_true", help="do not time torch.nn.LSTM")
    p.add_argument("--no-reference", action="store_true",
                   help="do not time the NumPy reference")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _tolerance(dtype: np.dtype[Any]) -> float:
    return 1e-3 if dtype == np.float32 else 1e-9


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    dtype = np.dtype(args.dtype)
    lstmx.set_num_threads(args.threads)
    torch = _import_torch(not args.no_torch)
    if torch is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        budget = Budget(min_reps=2, min_time=0.05, max_reps=20, max_time=0.3, cap_reps=1,
                        repeats=args.repeats)
    else:
        budget = Budget(repeats=args.repeats)
    info = machine_info(args.threads, torch)
    info["busy_cpus_before"] = busy_before = busy_cpus()
    if busy_before is not None and busy_before > BUSY_NOTE:
        print(f"note: other processes are using {busy_before:.2f} of {os.cpu_count()} CPUs; "
              f"timings will be noisy", file=sys.stderr)

    rows, checks = run(args.configs, dtype=dtype, budget=budget, torch=torch,
                       with_reference=not args.no_reference, progress=not args.quiet)
    elapsed = time.perf_counter() - t_start
    gemm_backend = "torch.mm" if torch is not None else "numpy.matmul"

    print(_header(info, dtype, gemm_backend))
    print()
    print(format_table(rows))
    sys.stdout.flush()
    tol = _tolerance(dtype)
    for name, diffs in checks.items():
        bad = {k: v for k, v in diffs.items() if not v <= tol}
        if bad:
            print(f"note: {name}: lstmx differs from a peer by more than {tol:g} (relative): "
                  + ", ".join(f"{k}={v:.3g}" for k, v in bad.items()), file=sys.stderr)
    noisy = [f"{r.config.name} {r.mode} {impl}" for r in rows for impl, t in r.timings.items()
             if _noisy(t)]
    noisy += sorted({f"{r.config.name} gemm" for r in rows if r.gemm and _noisy(r.gemm)})
    if noisy:
        print(f"note: other processes used over {BUSY_NOTE} CPUs during {len(noisy)} "
              f"measurement(s), which are unreliable: {', '.join(noisy)}", file=sys.stderr)
    print(f"\ntotal run time {elapsed:.1f} s", file=sys.stderr)

    if args.json:
        doc = {"machine": info, "dtype": str(dtype), "threads": args.threads,
               "gemm_backend": gemm_backend, "budget": asdict(budget),
               "reference_max_tbh": REFERENCE_MAX_TBH, "total_time_s": elapsed,
               "results": [r.to_json() for r in rows], "max_rel_diff": checks}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
