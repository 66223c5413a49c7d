"""Benchmark lstmx against its peers (PyTorch, ONNX Runtime, the NumPy reference) and the GEMM
roofline, and check it against the performance targets.

For each configuration (input size ``I``, hidden size ``H``, batch ``B``, steps ``T``) and each
mode it times, in this one process, with the same thread count and the same inputs:

* ``infer``: a forward pass over the whole sequence, no workspace kept
  (:func:`lstmx.lstm`, which packs the weights in every call, and ``frozen``: a layer made by
  :meth:`lstmx.LSTM.freeze`, packed once; ``torch.nn.LSTM`` under ``torch.inference_mode()``;
  an ONNX Runtime session holding one ONNX ``LSTM`` node, its weights packed when the session
  is made; :func:`lstmx.reference.lstm_forward`);
* ``train``: a training forward pass and backpropagation through time
  (:func:`lstmx.lstm_train` + :func:`lstmx.lstm_backward`; ``torch.nn.LSTM`` with
  ``requires_grad`` inputs + ``y.backward(dy)``; the reference's forward + backward).
  ONNX Runtime is an inference peer only.

Every peer is first checked to compute what lstmx computes (outputs, and gradients where it has
them); a mismatch is reported loudly. torch, onnx + onnxruntime and matplotlib are optional:
a missing one is skipped with a one-line message.

It also measures the machine's matrix-multiply rate on the LSTM's own GEMM shape,
``[T*B, I+H] x [I+H, 4H]`` (``torch.mm``, or NumPy without torch), as a roofline: an LSTM
cannot beat one big GEMM of the same FLOP count, because its recurrent half is ``T`` small,
sequential GEMMs.

With ``--targets`` (the default for ``--configs all``) it also measures lstmx's 1- to 2-thread
scaling, lstmx against torch in float64, and the memory of one float32 training step of each
(the growth of the peak resident set over the step, each in a fresh process), and ends with the
list of targets, each with its number and met / NOT met.

FLOPs counted: forward ``2*T*B*4H*(I+H)``, training three times that (forward, and two GEMMs
per weight in backward). Medians are reported, after one warm-up call per measurement.

Run it as ``python -m lstmx bench`` or ``python benchmarks/bench_lstm.py``; ``--help`` lists
the options. It writes ``lstmx-bench.json`` and ``lstmx-bench.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

import lstmx

from .functional import AnyArray

__all__ = ["BenchConfig", "GRID", "DEFAULT_CONFIGS", "TARGETS", "Budget", "Timing", "Peer", "Env",
           "Grid", "Row", "ThreadScaling", "Target", "Results", "measure", "measure_rounds",
           "run_grid", "run_all", "evaluate_targets", "report", "format_table", "machine_info",
           "main"]

MODES = ("infer", "train")
#: Every implementation timed, in table order; lstmx first, the others are its peers.
IMPLS = ("lstmx", "frozen", "torch", "onnxruntime", "reference")
#: lstmx's own entries: plain calls (``lstmx.lstm``, weights packed in every call) and a frozen
#: layer (``LSTM.freeze()``: packed once, as ONNX Runtime packs when it makes its session).
OURS = ("lstmx", "frozen")
#: The modes each implementation has.
IMPL_MODES = {"lstmx": MODES, "frozen": ("infer",), "torch": MODES, "onnxruntime": ("infer",),
              "reference": MODES}
#: The peers lstmx must beat: "the best peer" is the fastest of these (the reference is an oracle).
BEST_OF = ("torch", "onnxruntime")
SHORT = {"lstmx": "lstmx", "frozen": "frozen", "torch": "torch", "onnxruntime": "onnxrt",
         "reference": "ref"}

#: The reference (one NumPy step at a time) is timed only where ``T*B*H`` is at most this.
REFERENCE_MAX_TBH = 1_000_000
#: Warn about noisy timings when other processes use more than this many CPUs' worth.
BUSY_NOTE = 0.25
#: Seconds to pause after timing one implementation, before the next: worker threads that
#: still spin-wait (lstmx's and libgomp's about 8 ms) would slow whatever is timed next.
SETTLE = 0.02
#: Output file names, in ``--out``.
JSON_NAME, PLOT_NAME = "lstmx-bench.json", "lstmx-bench.png"

T_ = TypeVar("T_")


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

    @property
    def spec(self) -> str:
        """``name:I:H:B:T``, as :func:`parse_config` reads it."""
        return f"{self.name}:{self.I}:{self.H}:{self.B}:{self.T}"


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
#: The config of the thread-scaling and memory measurements.
TARGET_CONFIG = "b64-h512"


def parse_config(spec: str) -> BenchConfig:
    """A grid config by name, or a custom one written ``name:I:H:B:T`` (e.g. ``tiny:8:16:2:5``)."""
    spec = spec.strip()
    by_name = {c.name: c for c in GRID}
    if spec in by_name:
        return by_name[spec]
    parts = spec.split(":")
    if len(parts) == 5 and parts[0]:
        try:
            dims = [int(p) for p in parts[1:]]
        except ValueError:
            dims = []
        if dims and min(dims) >= 1:
            return BenchConfig(parts[0], *dims)
    raise argparse.ArgumentTypeError(
        f"unknown config {spec!r}: choose from {', '.join(by_name)}, or write name:I:H:B:T "
        f"with positive integers")


def _parse_configs(spec: str) -> list[BenchConfig]:
    if spec.strip().lower() == "all":
        return list(GRID)
    items = [s for s in spec.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("no config given")
    return [parse_config(s) for s in items]


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

    def rounds(self, rounds: int) -> list[Budget]:
        """This budget cut into at most ``rounds`` parts of at least one call each: exactly
        ``repeats`` calls in all, when that is set."""
        if self.repeats is not None:
            n = max(1, min(rounds, self.repeats))
            return [replace(self, repeats=self.repeats * (r + 1) // n - self.repeats * r // n)
                    for r in range(n)]
        if rounds <= 1:
            return [self]

        def cut(k: int) -> int:
            return max(1, -(-k // rounds))

        return [Budget(cut(self.min_reps), self.min_time / rounds, cut(self.max_reps),
                       self.max_time / rounds, cut(self.cap_reps))] * rounds

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
    #: With several rounds (:func:`measure_rounds`): each round's median, in seconds.
    round_medians: list[float] | None = None

    @classmethod
    def pooled(cls, parts: Sequence[Timing]) -> Timing:
        """The rounds of one measurement as one: every call's time, the most other processes
        used in any round, and each round's median."""
        if len(parts) == 1:
            return parts[0]
        busy = [p.other_cpus for p in parts if p.other_cpus is not None]
        return cls([t for p in parts for t in p.times], max(busy) if busy else None,
                   [p.median for p in parts])

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return float(statistics.median(self.times))

    def summary(self, flops: float | None = None) -> dict[str, Any]:
        """Median, spread and (given the FLOPs of a call) rate, for the JSON output."""
        med = self.median
        out = {"median_s": med, "min_s": min(self.times), "max_s": max(self.times),
               "reps": len(self.times), "other_cpus": self.other_cpus, "times_s": self.times,
               "round_medians_s": self.round_medians}
        if flops is not None:
            out["gflops"] = flops / med / 1e9
        return out


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


def measure_rounds(prog: Progress, what: str,
                   calls: Sequence[tuple[str, Callable[[], object], Budget, float]],
                   rounds: int, before: Callable[[str], None] | None = None) -> dict[str, Timing]:
    """Time each of ``calls`` (name, function, budget, seconds to settle after it) in turn, and
    all of them ``rounds`` times over, each time on its budget cut into ``rounds`` parts; then
    pool each one's calls. A slow phase of a shared machine then falls on every implementation
    alike, rather than on whichever was being timed. ``before(name)`` runs before each."""
    parts: dict[str, list[Timing]] = {name: [] for name, *_ in calls}
    cut = {name: budget.rounds(rounds) for name, _, budget, _ in calls}
    for r in range(rounds):
        for name, fn, _, settle in calls:
            if r >= len(cut[name]):
                continue
            if before is not None:
                before(name)
            tag = f" {r + 1}/{rounds}" if rounds > 1 else ""
            parts[name].append(prog.step(f"{what} {name}{tag}", functools.partial(
                measure, fn, cut[name][r])))
            time.sleep(settle)
    return {name: Timing.pooled(ts) for name, ts in parts.items()}


# ---- the peers -----------------------------------------------------------------------------------


@dataclass
class Inputs:
    """One configuration's inputs, shared by every peer."""

    x: AnyArray
    w_ih: AnyArray
    w_hh: AnyArray
    b_ih: AnyArray
    b_hh: AnyArray
    dy: AnyArray

    @property
    def args(self) -> tuple[AnyArray, AnyArray, AnyArray, AnyArray, AnyArray]:
        """``(x, w_ih, w_hh, b_ih, b_hh)``, the arguments of :func:`lstmx.lstm`."""
        return self.x, self.w_ih, self.w_hh, self.b_ih, self.b_hh


def make_inputs(cfg: BenchConfig, dtype: np.dtype[Any], seed: int = 0) -> Inputs:
    """Weights uniform in ``[-1/sqrt(H), 1/sqrt(H)]`` (PyTorch's init), ``x`` and ``dy`` normal."""
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(cfg.H)
    G = 4 * cfg.H

    def u(*shape: int) -> AnyArray:
        return rng.uniform(-k, k, shape).astype(dtype)

    return Inputs(x=rng.standard_normal((cfg.T, cfg.B, cfg.I)).astype(dtype),
                  w_ih=u(G, cfg.I), w_hh=u(G, cfg.H), b_ih=u(G), b_hh=u(G),
                  dy=rng.standard_normal((cfg.T, cfg.B, cfg.H)).astype(dtype))


@dataclass
class Expected:
    """lstmx's training output and gradients on one config's inputs: what the peers must give."""

    y: AnyArray
    grads: lstmx.LSTMGrads


#: A peer's check: its results' largest differences from lstmx's (see :func:`_rel_diff`), by name.
Check = Callable[[Expected], dict[str, float]]


@dataclass
class Peer:
    """One implementation on one config: its calls by mode (a mode it lacks is not timed), the
    budget to time them under, and a check that it computes what lstmx computes."""

    fns: dict[str, Callable[[], object]]
    budget: Budget
    check: Check | None = None
    #: Seconds to pause after using it, until its worker threads stop spin-waiting (SETTLE; more
    #: for peers whose threads spin longer).
    settle: float = SETTLE


def _rel_diff(a: Any, b: Any) -> float:
    """``max|a - b| / max(1, max|b|)``: the largest difference, relative to ``b``'s scale."""
    a = a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
    b = b.detach().numpy() if hasattr(b, "detach") else np.asarray(b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _diffs(e: Expected, y: Any, dx: Any, dw_ih: Any, dw_hh: Any) -> dict[str, float]:
    return {"y": _rel_diff(y, e.y), "dx": _rel_diff(dx, e.grads.dx),
            "dw_ih": _rel_diff(dw_ih, e.grads.dw_ih), "dw_hh": _rel_diff(dw_hh, e.grads.dw_hh)}


def lstmx_fns(inp: Inputs) -> dict[str, Callable[[], object]]:
    """lstmx's inference and training calls."""

    def infer() -> object:
        return lstmx.lstm(*inp.args)

    def train() -> object:
        _, _, _, tape = lstmx.lstm_train(*inp.args)
        return lstmx.lstm_backward(tape, inp.dy)

    return {"infer": infer, "train": train}


def frozen_peer(inp: Inputs, budget: Budget) -> Peer:
    """A one-layer :class:`lstmx.LSTM` holding ``inp``'s weights, frozen (packed once);
    inference only."""
    G, I = inp.w_ih.shape
    layer = lstmx.LSTM(I, G // 4, dtype=inp.x.dtype)
    layer.load_state_dict({"weight_ih_l0": inp.w_ih, "weight_hh_l0": inp.w_hh,
                           "bias_ih_l0": inp.b_ih, "bias_hh_l0": inp.b_hh})
    frozen = layer.freeze()

    def infer() -> object:
        return frozen(inp.x)

    def check(e: Expected) -> dict[str, float]:
        return {"y": _rel_diff(frozen(inp.x)[0], e.y)}

    return Peer({"infer": infer}, budget, check)


def reference_peer(inp: Inputs, budget: Budget) -> Peer:
    """The NumPy reference's inference and training calls."""

    def infer() -> object:
        return lstmx.reference.lstm_forward(*inp.args)

    def train() -> tuple[Any, dict[str, AnyArray]]:
        y, _, _, cache = lstmx.reference.lstm_forward(*inp.args)
        return y, lstmx.reference.lstm_backward(cache, inp.dy)

    def check(e: Expected) -> dict[str, float]:
        y, g = train()
        return _diffs(e, y, g["dx"], g["dw_ih"], g["dw_hh"])

    # NumPy's OpenBLAS threads busy-wait for up to ~0.1 s after a matrix product.
    return Peer({"infer": infer, "train": train}, budget, check, settle=0.2)


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

    def train(self) -> Any:
        """Forward with ``requires_grad`` input and weights, then ``y.backward(dy)``."""
        self.module.zero_grad(set_to_none=True)
        self.xg.grad = None
        y, _ = self.module(self.xg)
        y.backward(self.dy)
        return y

    def check(self, e: Expected) -> dict[str, float]:
        """Output and gradients against lstmx's."""
        y, mod = self.train(), self.module
        return {**_diffs(e, y, self.xg.grad, mod.weight_ih_l0.grad, mod.weight_hh_l0.grad),
                "db": _rel_diff(mod.bias_ih_l0.grad, e.grads.db_ih)}

    def peer(self, budget: Budget) -> Peer:
        """The calls to time, by mode."""
        return Peer({"infer": self.infer, "train": self.train}, budget, self.check)


#: Where ONNX's gate blocks (i, o, f, c) are in lstmx's (i, f, g, o).
ONNX_GATES = (0, 3, 1, 2)


def onnx_lstm_model(onnx: Any, inp: Inputs) -> bytes:
    """A one-node ONNX model, ``Y [T, 1, B, H] = LSTM(X [T, B, I])``, with ``inp``'s weights as
    initializers: ``W [1, 4H, I]``, ``R [1, 4H, H]``, ``B [1, 8H]`` = (input bias, recurrent
    bias), their gate blocks reordered from lstmx's i, f, g, o to ONNX's i, o, f, c."""
    from onnx import TensorProto, helper, numpy_helper

    T, B, I = inp.x.shape
    H = inp.w_hh.shape[1]

    def gates(a: AnyArray) -> AnyArray:  # [4H, ...] -> [4H, ...], blocks reordered
        return np.ascontiguousarray(a.reshape(4, H, *a.shape[1:])[list(ONNX_GATES)]
                                    .reshape(a.shape))

    weights = {"W": gates(inp.w_ih)[None], "R": gates(inp.w_hh)[None],
               "B": np.concatenate([gates(inp.b_ih), gates(inp.b_hh)])[None]}
    elem = TensorProto.FLOAT if inp.x.dtype == np.float32 else TensorProto.DOUBLE
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=H)], "lstm",
        [helper.make_tensor_value_info("X", elem, [T, B, I])],
        [helper.make_tensor_value_info("Y", elem, [T, 1, B, H])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # opset 14's; newer onnx packages default to IRs older runtimes reject
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def onnxruntime_peer(ort: Any, onnx: Any, inp: Inputs, threads: int, budget: Budget) -> Peer:
    """An ONNX Runtime CPU session on :func:`onnx_lstm_model`: ``threads`` intra-op threads, one
    inter-op thread, sequential execution. Inference only."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(onnx_lstm_model(onnx, inp), so,
                                providers=["CPUExecutionProvider"])
    feed = {"X": inp.x}

    def infer() -> Any:
        return sess.run(None, feed)

    def check(e: Expected) -> dict[str, float]:
        return {"y": _rel_diff(infer()[0][:, 0], e.y)}

    # Its workers spin for tens of milliseconds after a run (kept: it is faster at batch 1).
    return Peer({"infer": infer}, budget, check, settle=0.1)


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


def _optional(name: str, enabled: bool = True, skipping: str = "") -> Any | None:
    """Import an optional module; if it is missing, say so in one line and return ``None``."""
    if not enabled:
        return None
    try:
        return importlib.import_module(name)
    except (ImportError, OSError) as e:
        print(f"{name} not available ({e}); skipping {skipping or 'that peer'}",
              file=sys.stderr)
        return None


@dataclass
class Env:
    """What a run works with: the thread count, the timing budget, the optional peers found."""

    threads: int
    budget: Budget
    #: Rounds of every comparison (:func:`measure_rounds`).
    rounds: int = 1
    torch: Any | None = None
    onnx: Any | None = None
    ort: Any | None = None
    reference: bool = True

    def impls(self, cfg: BenchConfig, dtype: np.dtype[Any],
              wanted: Sequence[str] = IMPLS) -> list[str]:
        """The implementations of ``wanted`` that run on ``cfg`` in ``dtype``."""
        ok = {"lstmx": True, "frozen": True, "torch": self.torch is not None,
              # ONNX Runtime's CPU LSTM kernel is float32 only.
              "onnxruntime": self.ort is not None and dtype == np.float32,
              "reference": self.reference and cfg.T * cfg.B * cfg.H <= REFERENCE_MAX_TBH}
        return [i for i in IMPLS if i in wanted and ok[i]]

    def peer(self, impl: str, cfg: BenchConfig, inp: Inputs) -> Peer:
        """``impl``'s calls on ``cfg`` with inputs ``inp``."""
        if impl == "lstmx":
            return Peer(lstmx_fns(inp), self.budget)
        if impl == "frozen":
            return frozen_peer(inp, self.budget)
        if impl == "torch":
            return TorchPeer.build(self.torch, cfg, inp).peer(self.budget)
        if impl == "onnxruntime":
            return onnxruntime_peer(self.ort, self.onnx, inp, self.threads, self.budget)
        return reference_peer(inp, self.budget.limited(max_reps=3, max_time=1.0, cap_reps=2))


# ---- progress ------------------------------------------------------------------------------------


def _describe(result: object) -> str:
    if isinstance(result, Timing):
        busy = f"  [other processes: {result.other_cpus:.2f} CPUs]" if _noisy(result) else ""
        return f"{result.median * 1e3:.3f} ms (n={len(result.times)}){busy}"
    if isinstance(result, int):
        return f"{result / 2**20:.1f} MiB"
    return ""


class Progress:
    """A progress bar on stderr, ``[######------]  7/40 b32-h256 infer torch  12.3 ms (n=5)``:
    redrawn in place on a terminal, one line per finished step elsewhere (a log file)."""

    BAR = 20

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.stream = sys.stderr
        self.tty = enabled and self.stream.isatty()
        self.shown = 0  # characters of the bar line now on screen (terminal only)

    def _draw(self, what: str, tail: str, final: bool) -> None:
        fill = self.BAR * self.done // self.total
        line = (f"[{'#' * fill}{'-' * (self.BAR - fill)}] {self.done:>{len(str(self.total))}}"
                f"/{self.total} {what:<28} {tail}").rstrip()
        if self.tty:
            line = line[:shutil.get_terminal_size().columns - 1]
            self.stream.write("\r" + line.ljust(self.shown))
            self.shown = len(line)
        elif final:
            self.stream.write(line + "\n")
        self.stream.flush()

    def step(self, what: str, fn: Callable[[], T_]) -> T_:
        """Run one step, drawing the bar before and after; a :class:`Timing` result also gets
        the other processes' CPU use during it."""
        if self.enabled:
            self._draw(what, "...", final=False)
        meter = CpuMeter()
        result = fn()
        if isinstance(result, Timing):
            result.other_cpus = meter.read()
        self.done += 1
        if self.enabled:
            self._draw(what, _describe(result), final=True)
        return result

    def skip(self, steps: int, message: str) -> None:
        """Count ``steps`` as done without running them, and say why."""
        self.done += steps
        self.note(message)

    def note(self, message: str) -> None:
        """Print a message on its own line (on stderr), clear of the bar."""
        self.close()
        print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Clear the bar from a terminal."""
        if self.tty and self.shown:
            self.stream.write("\r" + " " * self.shown + "\r")
            self.stream.flush()
            self.shown = 0


# ---- the runs ------------------------------------------------------------------------------------


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

    def best_peer(self) -> str | None:
        """The fastest of the :data:`BEST_OF` peers timed, or ``None``."""
        peers = [k for k in self.timings if k in BEST_OF]
        return min(peers, key=lambda k: self.timings[k].median) if peers else None

    def speedup_best(self) -> float | None:
        """``best_peer_time / lstmx_time``, or ``None``."""
        best = self.best_peer()
        return None if best is None else self.speedup(best)

    def frozen_speedup_best(self) -> float | None:
        """``best_peer_time / frozen_time`` (lstmx with its weights packed once), or ``None``."""
        best, f = self.best_peer(), self.timings.get("frozen")
        return None if best is None or f is None else self.timings[best].median / f.median

    def roofline_ms(self) -> float | None:
        """The milliseconds of this row's FLOPs at the roofline GEMM's rate, or ``None``."""
        return None if not self.gemm_gflops else self.flops / self.gemm_gflops / 1e6

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
                "speedup_vs": {k: self.speedup(k) for k in self.timings if k not in OURS},
                "best_peer": self.best_peer(), "speedup_vs_best": self.speedup_best(),
                "frozen_speedup_vs_best": self.frozen_speedup_best(),
                "pct_of_gemm": self.pct_gemm()}


@dataclass
class Grid:
    """The rows of one run over configs in one dtype, and how far each peer's results were from
    lstmx's (per config: ``{impl}_{quantity}`` -> relative difference)."""

    dtype: np.dtype[Any]
    rows: list[Row]
    checks: dict[str, dict[str, float]]

    def to_json(self) -> dict[str, Any]:
        """The rows and checks, as plain JSON data."""
        return {"dtype": str(self.dtype), "results": [r.to_json() for r in self.rows],
                "max_rel_diff": self.checks}


def grid_steps(env: Env, configs: Sequence[BenchConfig], dtype: np.dtype[Any],
               wanted: Sequence[str] = IMPLS, gemm: bool = True) -> int:
    """How many measurements :func:`run_grid` makes with the same arguments."""
    return env.rounds * sum(gemm + sum(len(IMPL_MODES[i]) for i in env.impls(c, dtype, wanted))
                            for c in configs)


def run_grid(env: Env, configs: Sequence[BenchConfig], dtype: np.dtype[Any], prog: Progress,
             wanted: Sequence[str] = IMPLS, gemm: bool = True, label: str = "") -> Grid:
    """Time the ``wanted`` implementations (and, with ``gemm``, the roofline GEMM) on every
    config and mode; first check each peer's results against lstmx's."""
    rows: list[Row] = []
    checks: dict[str, dict[str, float]] = {}
    for cfg in configs:
        inp = make_inputs(cfg, dtype)
        peers: dict[str, Peer] = {}
        for impl in env.impls(cfg, dtype, wanted):
            try:
                peers[impl] = env.peer(impl, cfg, inp)
            except Exception as e:  # noqa: BLE001 - an optional peer's failure skips it
                if impl == "lstmx":
                    raise
                prog.skip(len(IMPL_MODES[impl]), f"WARNING: {impl} failed on {cfg.name} "
                                                 f"({type(e).__name__}: {e}); skipped")
        y, _, _, tape = lstmx.lstm_train(*inp.args)
        expected = Expected(y, lstmx.lstm_backward(tape, inp.dy))
        checks[cfg.name] = {"lstmx_infer_vs_train_y": _rel_diff(lstmx.lstm(*inp.args)[0], y)}
        for impl, peer in peers.items():
            if peer.check is not None:
                checks[cfg.name].update({f"{impl}_{k}": v for k, v in peer.check(expected).items()})
                time.sleep(peer.settle)
        gemm_t = gemm_gflops = None
        for mode in MODES:  # the roofline GEMM is timed in inference's rounds
            calls = [(impl, peer.fns[mode], peer.budget, peer.settle)
                     for impl, peer in peers.items() if mode in peer.fns]
            if gemm and mode == MODES[0]:
                calls.insert(0, ("gemm", gemm_fn(env.torch, cfg, dtype), env.budget, SETTLE))
            timings = measure_rounds(prog, f"{label}{cfg.name} {mode}", calls, env.rounds)
            if "gemm" in timings:
                gemm_t = timings.pop("gemm")
                gemm_gflops = 2.0 * math.prod(cfg.gemm_shape) / gemm_t.median / 1e9
            row = Row(cfg, mode, cfg.flops(mode), gemm_gflops=gemm_gflops, gemm=gemm_t)
            row.timings.update(timings)
            rows.append(row)
    return Grid(dtype, rows, checks)


@dataclass
class ThreadScaling:
    """lstmx's float32 timings on one config with 1 and with 2 threads, by mode."""

    config: BenchConfig
    timings: dict[str, dict[int, Timing]]

    def speedup(self, mode: str) -> float:
        """1-thread time over 2-thread time."""
        t = self.timings[mode]
        return t[1].median / t[2].median

    def to_json(self) -> dict[str, Any]:
        """Timings and speedups, as plain JSON data."""
        return {"config": asdict(self.config), "dtype": "float32",
                "modes": {m: {"1": t[1].summary(), "2": t[2].summary(),
                              "speedup": self.speedup(m)} for m, t in self.timings.items()}}


def run_threads(env: Env, cfg: BenchConfig, prog: Progress) -> ThreadScaling:
    """Time lstmx in float32 on ``cfg`` with 1, then 2 threads (then restore ``env.threads``)."""
    fns = lstmx_fns(make_inputs(cfg, np.dtype(np.float32)))
    out: dict[str, dict[int, Timing]] = {}
    try:
        for mode in MODES:
            t = measure_rounds(prog, f"threads {cfg.name} {mode}",
                               [(f"x{n}", fns[mode], env.budget, 0.0) for n in (1, 2)],
                               env.rounds, before=lambda name: lstmx.set_num_threads(int(name[1:])))
            out[mode] = {n: t[f"x{n}"] for n in (1, 2)}
    finally:
        lstmx.set_num_threads(env.threads)
    return ThreadScaling(cfg, out)


def _peak_rss() -> tuple[int, str]:
    """This process's peak resident set so far, in bytes, and how it was read.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this address space.
    ``ru_maxrss`` is not used there: a child process inherits its parent's value across
    ``exec``, so in a child of this (large) process it would not move. Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1]) * 1024, "VmHWM"
    except (OSError, ValueError, IndexError):
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "ru_maxrss"


def rss_child_main(impl: str, spec: str, threads: str) -> None:
    """The memory measurement, in a fresh interpreter: print, as JSON, how much one float32
    training step of ``impl`` (``lstmx`` or ``torch``) on config ``spec`` raised the peak RSS,
    counted from after the imports and the inputs' creation."""
    cfg = parse_config(spec)
    inp = make_inputs(cfg, np.dtype(np.float32))
    if impl == "torch":
        import torch

        torch.set_num_threads(int(threads))
        step = TorchPeer.build(torch, cfg, inp).train
    else:
        lstmx.set_num_threads(int(threads))
        step = lstmx_fns(inp)["train"]
    try:  # Linux: restart the high-water mark here, so that import-time peaks do not hide it
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
    before = _peak_rss()[0]
    step()
    print(json.dumps({"bytes": _peak_rss()[0] - before}))


def _rss_of_step(impl: str, cfg: BenchConfig, threads: int) -> int | str:
    """:func:`rss_child_main` in a fresh interpreter: bytes, or why it failed."""
    code = "import sys; from lstmx.bench import rss_child_main; rss_child_main(*sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-c", code, impl, cfg.spec, str(threads)],
                          capture_output=True, text=True, check=False)
    try:
        return int(json.loads(proc.stdout.strip().splitlines()[-1])["bytes"])
    except (ValueError, IndexError, KeyError, TypeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"exit status {proc.returncode}: {tail}"


def run_memory(env: Env, cfg: BenchConfig, prog: Progress) -> dict[str, Any]:
    """Peak-RSS growth of one float32 training step of lstmx and of torch, each in a fresh
    process."""
    impls = env.impls(cfg, np.dtype(np.float32), ("lstmx", "torch"))
    out: dict[str, Any] = {"config": asdict(cfg), "dtype": "float32", "bytes": {},
                           "method": _peak_rss()[1]}  # the children's too: same platform
    for impl in impls:
        r = prog.step(f"memory {cfg.name} {impl}",
                      functools.partial(_rss_of_step, impl, cfg, env.threads))
        if isinstance(r, str):
            prog.note(f"WARNING: the memory measurement of {impl} failed ({r})")
        else:
            out["bytes"][impl] = r
    b = out["bytes"]
    out["ratio"] = b["lstmx"] / b["torch"] if b.get("torch") and "lstmx" in b else None
    return out


@dataclass
class Results:
    """Everything one benchmark run measured; the sections are ``None`` where not run."""

    main: Grid
    float64: Grid | None = None
    threads: ThreadScaling | None = None
    memory: dict[str, Any] | None = None
    layer: list[Any] | None = None  # bench_layer.LayerRow

    def timings(self) -> Iterator[tuple[str, Timing]]:
        """Every measurement, with what it measured."""
        for g in [self.main] + ([self.float64] if self.float64 is not None else []):
            for r in g.rows:
                yield from ((f"{r.config.name} {r.mode} {i} ({g.dtype})", t)
                            for i, t in r.timings.items())
                if r.gemm is not None:
                    yield f"{r.config.name} gemm", r.gemm
        if self.threads is not None:
            yield from ((f"{self.threads.config.name} {m} x{n} threads", t)
                        for m, ts in self.threads.timings.items() for n, t in ts.items())
        for r in self.layer or []:
            yield from ((f"layer {r.name} {r.mode} {i}", t) for i, t in r.timings.items())


# ---- the targets ---------------------------------------------------------------------------------


@dataclass
class Target:
    """One performance target, its measured number and whether it is met (``None``: not
    measured)."""

    target: str
    value: str
    met: bool | None


#: The issue's targets, in the order :func:`evaluate_targets` reports them ({cfg}: the config of
#: the thread measurement). "The best peer" is the faster of torch and onnxruntime.
TARGETS = (
    "(1) f32 inference >= 1.0x the best peer on every config",
    "(1) f32 inference >= 90% of GEMM on every B>=4 config",
    "(1) f32 inference >= 2x the best peer on b1-h128",
    "(1) f32 inference, frozen weights, >= 1.0x the best peer on every config",
    "(1) f32 inference, frozen weights, >= 2x the best peer on b1-h128",
    "(2) f32 training >= 1.0x torch on every config",
    "(2) f32 training >= 85% of GEMM on every B>=4 config",
    "(3) 2 threads >= 1.85x 1 thread on {cfg}",
    "(4) float64 >= 2x torch on every config",
    "(5) training peak RSS <= torch's",
)
#: A target's measured number, and whether it is met (None: not measured).
Verdict = tuple[str, bool | None]
NOT_MEASURED: Verdict = ("not measured", None)


def _at_least(rows: Sequence[Row], metric: Callable[[Row], float | None], bound: float,
              unit: str) -> Verdict:
    """``metric >= bound`` on every row: met when the smallest value is."""
    vals = [(v, r) for r in rows if (v := metric(r)) is not None]
    if not vals:
        return NOT_MEASURED
    v, r = min(vals, key=lambda p: p[0])
    cfgs = {r.config.name for _, r in vals}
    grid = sum(c.name in cfgs for c in GRID)
    on = f"{len(cfgs)} config{'s' * (len(cfgs) > 1)}" + (
        f", {grid} of the grid's {len(GRID)}" if grid < len(GRID) else "")
    fmt = f"{v:.2f}x" if unit == "x" else f"{v:.1f}%"
    return f"min {fmt} ({r.config.name} {r.mode}; {on})", v >= bound


def _vs_torch(r: Row) -> float | None:
    return r.speedup("torch")


def evaluate_targets(res: Results) -> list[Target]:
    """The issue's :data:`TARGETS`, each with the number measured for it."""
    f32 = res.main.rows if res.main.dtype == np.float32 else []
    f64 = res.main if res.main.dtype == np.float64 else res.float64
    infer = [r for r in f32 if r.mode == "infer"]
    train = [r for r in f32 if r.mode == "train"]

    def batched(rows: list[Row]) -> list[Row]:
        return [r for r in rows if r.config.B >= 4]

    th, mem = res.threads, res.memory
    threads = NOT_MEASURED
    if th is not None:
        s = {m: th.speedup(m) for m in MODES}
        threads = ", ".join(f"{m} {v:.2f}x" for m, v in s.items()), min(s.values()) >= 1.85
    memory = NOT_MEASURED
    if mem is not None and mem["ratio"] is not None:
        b = mem["bytes"]
        memory = (f"lstmx {b['lstmx'] / 2**20:.1f} MiB, torch {b['torch'] / 2**20:.1f} MiB "
                  f"({mem['ratio']:.2f}x)", b["lstmx"] <= b["torch"])
    verdicts = [
        _at_least(infer, Row.speedup_best, 1.0, "x"),
        _at_least(batched(infer), Row.pct_gemm, 90.0, "%"),
        _at_least([r for r in infer if r.config.name == "b1-h128"], Row.speedup_best, 2.0, "x"),
        _at_least(infer, Row.frozen_speedup_best, 1.0, "x"),
        _at_least([r for r in infer if r.config.name == "b1-h128"], Row.frozen_speedup_best,
                  2.0, "x"),
        _at_least(train, _vs_torch, 1.0, "x"),
        _at_least(batched(train), Row.pct_gemm, 85.0, "%"),
        threads,
        _at_least([] if f64 is None else f64.rows, _vs_torch, 2.0, "x"),
        memory,
    ]
    cfg = TARGET_CONFIG if th is None else th.config.name
    return [Target(text.format(cfg=cfg), value, met)
            for text, (value, met) in zip(TARGETS, verdicts, strict=True)]


# ---- output --------------------------------------------------------------------------------------


def _num(v: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if v is None else format(v, fmt) + suffix


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return format(v, ".3f" if v < 10 else ".2f" if v < 100 else ".1f")


#: A table column: header, then the cell on a row's first (ms) and second (GF/s) line.
Column = tuple[str, Callable[[Row], str], Callable[[Row], str]]


def _blank(r: Row) -> str:
    return ""


def _impl_column(impl: str) -> Column:
    return SHORT[impl], lambda r: _ms(r.ms(impl)), lambda r: _num(r.gflops(impl), ".1f")


def _ratio_column(peer: str) -> Column:
    return f"vs {SHORT[peer]}", lambda r: _num(r.speedup(peer), ".2f", "x"), _blank


def format_table(rows: Sequence[Row]) -> str:
    """The results as a fixed-width text table, two lines per row: milliseconds and ratios,
    then GFLOP/s. Columns appear for the implementations timed.

    ``GEMM`` is the row's FLOPs at the roofline GEMM's rate; ``vs X`` is a speedup, X's time
    over lstmx's (above 1x: lstmx is faster), ``vs best`` over the fastest of :data:`BEST_OF`;
    ``% GEMM`` is
    lstmx's GFLOP/s over the roofline GEMM's.
    """
    impls = [i for i in IMPLS if any(i in r.timings for r in rows)]
    peers = [i for i in impls if i not in OURS] if impls[:1] == ["lstmx"] else []
    gemm = any(r.gemm_gflops for r in rows)
    cols: list[Column] = [("config", lambda r: r.config.name, _blank),
                          ("mode", lambda r: r.mode, _blank),
                          ("unit", lambda r: "ms", lambda r: "GF/s")]
    cols += [_impl_column(i) for i in impls]
    if gemm:
        cols.append(("GEMM", lambda r: _ms(r.roofline_ms()),
                     lambda r: _num(r.gemm_gflops, ".1f")))
    cols += [_ratio_column(p) for p in peers]
    if sum(p in BEST_OF for p in peers) > 1:
        cols.append(("vs best", lambda r: _num(r.speedup_best(), ".2f", "x"), _blank))
    if "frozen" in impls and any(p in BEST_OF for p in peers):
        cols.append(("frozen vs best", lambda r: _num(r.frozen_speedup_best(), ".2f", "x"),
                     _blank))
    if gemm:
        cols.append(("% GEMM", lambda r: _num(r.pct_gemm(), ".1f", "%"), _blank))

    cells = [[h for h, _, _ in cols]]
    for r in rows:
        cells += [[f(r) for _, f, _ in cols], [g(r) for _, _, g in cols]]
    widths = [max(7 if i > 2 else 0, *(len(c[i]) for c in cells)) for i in range(len(cols))]

    def line(cs: Sequence[str]) -> str:
        return " ".join(c.ljust(w) if i < 3 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(cs, widths))).rstrip()

    out = [line(cells[0]), "-" * len(line(cells[0]))]
    return "\n".join(out + [line(c) for c in cells[1:]])


def format_sections(res: Results) -> str:
    """The thread-scaling, float64 and memory sections that were run, as text."""
    out = []
    if res.threads is not None:
        th = res.threads
        out.append(f"threads: lstmx on {th.config.name}, float32, 1 vs 2 threads")
        out += [f"  {m:<6} 1 thread {_ms(t[1].median * 1e3):>8} ms   2 threads "
                f"{_ms(t[2].median * 1e3):>8} ms   speedup {th.speedup(m):.2f}x"
                for m, t in th.timings.items()]
    if res.float64 is not None:
        out += ["", "float64: lstmx vs torch", format_table(res.float64.rows)]
    if res.memory is not None:
        mem, b = res.memory, res.memory["bytes"]
        sizes = "   ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in b.items())
        ratio = "" if mem["ratio"] is None else f"   lstmx/torch {mem['ratio']:.2f}x"
        out += ["", f"memory: peak RSS growth over one float32 training step (forward + "
                    f"backward) on {mem['config']['name']}, each in a fresh process",
                f"  {sizes}{ratio}"]
    return "\n".join(out).strip("\n")


def format_targets(targets: Sequence[Target]) -> str:
    """The targets, one a line: met / NOT met / not measured, what, and the number."""
    status = {True: "met", False: "NOT met", None: "n/a"}
    width = max(len(t.target) for t in targets)
    return "\n".join(["targets:"] + [f"  {status[t.met]:<8} {t.target:<{width}}  {t.value}"
                                     for t in targets])


def write_plot(rows: Sequence[Row], path: str, title: str) -> bool:
    """Grouped bars of GFLOP/s per config for lstmx, its peers and the GEMM roofline, one panel
    per mode, as a PNG (matplotlib, Agg backend). False, with a message, without matplotlib."""
    if _optional("matplotlib", skipping="the plot") is None:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r.config.name for r in rows))
    series: list[tuple[str, Callable[[Row], float | None]]] = [
        (i, functools.partial(Row.gflops, impl=i)) for i in IMPLS if i != "reference"]
    series.append(("GEMM roofline", lambda r: r.gemm_gflops))
    fig = Figure(figsize=(max(7.0, 1.2 * len(names) + 2), 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, mode in zip(fig.subplots(len(MODES), 1), MODES):
        by_cfg = {r.config.name: r for r in rows if r.mode == mode}
        bars = [(f"C{k}", label, pts) for k, (label, get) in enumerate(series)
                if (pts := [(j, v) for j, n in enumerate(names)
                            if n in by_cfg and (v := get(by_cfg[n])) is not None])]
        width = 0.8 / max(len(bars), 1)
        for k, (color, label, pts) in enumerate(bars):
            ax.bar([j - 0.4 + (k + 0.5) * width for j, _ in pts], [v for _, v in pts], width,
                   label=label, color=color)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(mode)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return True


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


def _noisy(t: Timing) -> bool:
    return t.other_cpus is not None and t.other_cpus > BUSY_NOTE


def busy_cpus(interval: float = 0.25) -> float | None:
    """CPUs' worth of time other processes use during ``interval`` seconds (sleeping here)."""
    meter = CpuMeter(min_wall=0.0)
    time.sleep(interval)
    return meter.read()


def machine_info(env: Env) -> dict[str, Any]:
    """Platform, CPU, thread count, lstmx's build configuration and peer versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "threads": env.threads,
        "lstmx_config": lstmx.config(), "numpy": np.__version__, "numpy_blas": _numpy_blas(),
        "torch": None if env.torch is None else env.torch.__version__,
        "onnxruntime": None if env.ort is None else env.ort.__version__,
    }
    if env.torch is not None:
        info["torch_threads"] = env.torch.get_num_threads()
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
            f"torch {info['torch'] or 'n/a'}; onnxruntime {info['onnxruntime'] or 'n/a'}; "
            f"numpy {info['numpy']}\n"
            f"{info['cpu_model']}, {info['cpu_count']} CPUs ({_busy(info)}); "
            f"threads {info['threads']}; dtype {dtype}; GEMM roofline via {gemm_backend}\n"
            f"medians. GEMM: the same FLOPs at the roofline GEMM's rate. 'vs X': X's time / "
            f"lstmx's (>1x: lstmx faster);\n'vs best': against the faster of torch and onnxrt; "
            f"'% GEMM': lstmx GF/s / GEMM GF/s; 'frozen': lstmx with its weights packed once "
            f"(LSTM.freeze)")


def _check_warnings(grids: Sequence[Grid]) -> list[str]:
    out = []
    for g in grids:
        tol = 1e-3 if g.dtype == np.float32 else 1e-9
        for name, diffs in g.checks.items():
            bad = {k: v for k, v in diffs.items() if not v <= tol}
            if bad:
                out.append(f"WARNING: {name} ({g.dtype}): results differ from lstmx's by more "
                           f"than {tol:g} (relative): "
                           + ", ".join(f"{k}={v:.3g}" for k, v in bad.items())
                           + "; those peers' timings compare a different computation")
    return out


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
        prog="python -m lstmx bench",
        description="Time lstmx's LSTM inference and training against torch.nn.LSTM, ONNX "
                    "Runtime (inference), the NumPy reference and the machine's GEMM rate; "
                    "optionally check the performance targets.",
        epilog=f"Configs: {grid}. The reference is timed only where T*B*H <= "
               f"{REFERENCE_MAX_TBH:,}; ONNX Runtime only in float32. torch, onnx + "
               f"onnxruntime and matplotlib are optional (pip install torch==2.13.0; pip "
               f"install '.[bench]'). Targets: "
               + "; ".join(t.format(cfg="--target-config") for t in TARGETS)
               + "; the best peer is the faster of torch and onnxruntime.")
    p.add_argument("--configs", type=_parse_configs, default=_parse_configs(DEFAULT_CONFIGS),
                   metavar="LIST", help=f"comma-separated config names or custom configs "
                                        f"name:I:H:B:T, or 'all' (default: {DEFAULT_CONFIGS})")
    p.add_argument("--threads", type=_positive_int, default=2,
                   help="threads for lstmx, torch and onnxruntime (default: 2)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="data type of every input (default: float32)")
    p.add_argument("--repeats", type=_positive_int, default=None,
                   help="timed calls per measurement, shared out over the rounds (default: "
                        "adaptive, at least 5 calls and 0.3 s, at most ~2 s once 3 calls are in; "
                        "the reference at most 3)")
    p.add_argument("--quick", action="store_true", help="fewer calls per measurement and one "
                                                        "round: a fast, rough run")
    p.add_argument("--rounds", type=_positive_int, default=None,
                   help="time the implementations of each comparison in turn, this many times "
                        "over, and pool each one's calls, so that a slow phase of a shared "
                        "machine falls on all alike (default: 3, or 1 with --quick)")
    p.add_argument("--targets", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure 1 vs 2 threads and the peak memory of a training step "
                        "(lstmx vs torch, fresh processes) on --target-config, lstmx vs torch in "
                        "float64 on --configs, and end with the targets met and not met "
                        "(default: on with --configs all)")
    p.add_argument("--layer", action=argparse.BooleanOptionalAction, default=None,
                   help="also time the layer variants on --target-config against their peers: "
                        "variable lengths (vs torch on a PackedSequence), 2-layer bidirectional "
                        "(vs torch), LayerNorm-LSTM (vs the same cell in torch ops) (default: on "
                        "with --configs all)")
    p.add_argument("--target-config", type=parse_config, default=parse_config(TARGET_CONFIG),
                   metavar="CONFIG", help="config of the thread and memory measurements, a "
                                          f"name or name:I:H:B:T (default: {TARGET_CONFIG})")
    p.add_argument("--out", metavar="DIR", default=".",
                   help=f"folder for {JSON_NAME} (every number and the machine's details) and "
                        f"{PLOT_NAME} (default: the current folder)")
    p.add_argument("--no-plot", action="store_true", help=f"do not write {PLOT_NAME}")
    p.add_argument("--no-torch", action="store_true", help="do not time torch.nn.LSTM")
    p.add_argument("--no-onnxruntime", action="store_true", help="do not time ONNX Runtime")
    p.add_argument("--no-reference", action="store_true",
                   help="do not time the NumPy reference")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    return p


def _env(args: argparse.Namespace) -> Env:
    """Set the thread counts and import the optional peers asked for."""
    lstmx.set_num_threads(args.threads)
    if args.quick:
        budget = Budget(min_reps=2, min_time=0.05, max_reps=20, max_time=0.3, cap_reps=1,
                        repeats=args.repeats)
    else:
        budget = Budget(repeats=args.repeats)
    torch = _optional("torch", not args.no_torch, "the torch peer")
    rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
    if args.repeats is not None:  # at least one call a round
        rounds = min(rounds, args.repeats)
    env = Env(args.threads, budget, rounds, torch=torch, reference=not args.no_reference)
    if env.torch is not None:
        env.torch.set_num_threads(args.threads)
    onnx = _optional("onnx", not args.no_onnxruntime, "the onnxruntime peer")
    if onnx is not None:
        env.onnx, env.ort = onnx, _optional("onnxruntime", skipping="the onnxruntime peer")
    return env


def run_all(env: Env, configs: Sequence[BenchConfig], dtype: np.dtype[Any], targets: bool,
            target_config: BenchConfig, progress: bool = True, layer: bool = False) -> Results:
    """The grid in ``dtype``; with ``targets``, also float64 against torch, 1 vs 2 threads and
    memory; with ``layer``, the layer variants (:mod:`lstmx.bench_layer`)."""
    from . import bench_layer

    f64 = np.dtype(np.float64)
    run_f64 = targets and dtype != f64 and env.torch is not None
    if targets and env.torch is None:
        print("no torch: the float64 comparison is skipped", file=sys.stderr)
    vs_torch = ("lstmx", "torch")
    steps = (grid_steps(env, configs, dtype)
             + run_f64 * grid_steps(env, configs, f64, vs_torch, gemm=False)
             + targets * (env.rounds * 2 * len(MODES)
                          + len(env.impls(target_config, dtype, vs_torch)))
             + layer * bench_layer.layer_steps(env))
    prog = Progress(steps, enabled=progress)
    res = Results(run_grid(env, configs, dtype, prog))
    if run_f64:
        res.float64 = run_grid(env, configs, f64, prog, vs_torch, gemm=False, label="f64 ")
    if targets:
        res.threads = run_threads(env, target_config, prog)
        res.memory = run_memory(env, target_config, prog)
    if layer:
        res.layer = bench_layer.run_layer(env, target_config, prog)
    prog.close()
    return res


def report(res: Results, header: str, targets: list[Target] | None,
           target_config: BenchConfig | None = None) -> None:
    """Print the results on stdout: the table, the peers' disagreements, the sections, the
    targets, and the measurements disturbed by other processes."""
    from .bench_layer import format_layer

    print(header + "\n\n" + format_table(res.main.rows))
    warnings = _check_warnings([g for g in (res.main, res.float64) if g is not None])
    layer = format_layer(res.layer, target_config) if res.layer and target_config else ""
    for text in ("\n".join(warnings), format_sections(res), layer,
                 format_targets(targets) if targets else ""):
        if text:
            print("\n" + text)
    noisy = list(dict.fromkeys(what for what, t in res.timings() if _noisy(t)))
    if noisy:
        more = f", and {len(noisy) - 8} more (other_cpus in the JSON)" if len(noisy) > 8 else ""
        print(f"\nnote: other processes used over {BUSY_NOTE} CPUs during {len(noisy)} "
              f"measurement(s), which are unreliable: {', '.join(noisy[:8])}{more}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    dtype = np.dtype(args.dtype)
    with_targets = args.targets if args.targets is not None else args.configs == list(GRID)
    with_layer = args.layer if args.layer is not None else args.configs == list(GRID)
    env = _env(args)
    info = machine_info(env)
    info["busy_cpus_before"] = busy_before = busy_cpus()
    if busy_before is not None and busy_before > BUSY_NOTE:
        print(f"note: other processes are using {busy_before:.2f} of {os.cpu_count()} CPUs; "
              f"timings will be noisy", file=sys.stderr)

    res = run_all(env, args.configs, dtype, with_targets, args.target_config, not args.quiet,
                  with_layer)
    elapsed = time.perf_counter() - t_start
    gemm_backend = "torch.mm" if env.torch is not None else "numpy.matmul"
    targets = evaluate_targets(res) if with_targets else None
    if res.layer:
        from .bench_layer import layer_targets

        targets = (targets or []) + layer_targets(res.layer)
    report(res, _header(info, dtype, gemm_backend), targets, args.target_config)
    print(f"\ntotal run time {elapsed:.1f} s", file=sys.stderr)

    doc = {"machine": info, "threads": args.threads, "gemm_backend": gemm_backend,
           "budget": asdict(env.budget), "reference_max_tbh": REFERENCE_MAX_TBH,
           "total_time_s": elapsed, **res.main.to_json(),
           "float64": None if res.float64 is None else res.float64.to_json(),
           "thread_scaling": None if res.threads is None else res.threads.to_json(),
           "memory": res.memory,
           "layer": None if res.layer is None else [r.to_json() for r in res.layer],
           "targets": None if targets is None else [asdict(t) for t in targets]}
    path = os.path.join(args.out, JSON_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"wrote {path}", file=sys.stderr)
    if not args.no_plot:
        path = os.path.join(args.out, PLOT_NAME)
        title = (f"lstmx {info['lstmx_config'].get('version')}, {dtype}, {args.threads} "
                 f"threads: {info['cpu_model']}")
        if write_plot(res.main.rows, path, title):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
