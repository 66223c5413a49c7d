"""The layer rows of ``python -m lstmx bench`` (``--layer``): lstmx's layer variants against the
peers that have them, on one config (``--target-config``, by default ``b64-h512``), float32,
modes ``infer`` and ``train`` (forward and backward), the same inputs for every implementation:

* ``varlen``: lengths uniform in ``[T/2, T]`` (seed 0). lstmx with ``lengths``; lstmx on the same
  data with every sequence ``T`` steps long; ``torch.nn.LSTM`` on a ``PackedSequence``
  (``pack_padded_sequence(..., enforce_sorted=False)``), which PyTorch runs without oneDNN.
  Reported besides the times: lstmx's throughput per useful token over its equal-length
  throughput.
* ``bidir2``: a 2-layer bidirectional ``lstmx.LSTM`` against ``torch.nn.LSTM`` with the same
  weights.
* ``layernorm``: lstmx's LayerNorm-LSTM against the same cell written with torch ops, one
  ``LayerNorm`` cell a step (the way users write it today, as no library ships it).
* ``stream``: one step of online inference from Python at B = 1, I = H = 256 (whatever the
  config): ``lstmx.LSTM.step`` and ``FrozenLSTM.step`` (the weights packed once) against
  ``torch.nn.LSTM`` called on one step, each carrying its state from call to call; and one
  GEMV of the same weights (NumPy's BLAS): a step at B = 1 must read all of them once.

Each peer is first checked to compute what lstmx computes (a mismatch is reported).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import lstmx

from .bench import (SETTLE, BenchConfig, Env, Progress, Target, Timing, make_inputs,
                    measure_rounds)
from .functional import AnyArray

__all__ = ["LayerRow", "LAYER_TARGETS", "layer_steps", "run_layer", "format_layer",
           "layer_targets"]

MODES = ("infer", "train")
#: The layer issue's targets, checked by :func:`layer_targets`.
LAYER_TARGETS = (
    "varlen: throughput per useful token >= 0.9x equal lengths",
    "varlen: >= 1.5x torch on a PackedSequence",
    "stream: one step at B=1, I=H=256 takes <= 10 us",
    "stream, float16 weights (freeze(np.float16)): one step at B=1, I=H=256 takes <= 10 us",
    "stream, int8 weights (freeze(np.int8)): one step at B=1, I=H=256 takes <= 10 us",
)
STREAM = 256  # I = H of the stream row


@dataclass
class LayerRow:
    """One variant in one mode: the timings by implementation, and the FLOPs of a call."""

    name: str
    mode: str
    flops: float
    timings: dict[str, Timing] = field(default_factory=dict)
    peer: str = "torch"  # what lstmx is compared with
    mismatch: float | None = None  # relative difference of the peer's output from lstmx's
    tokens: tuple[int, int] | None = None  # varlen: useful tokens, and T*B

    def ms(self, impl: str) -> float | None:
        """``impl``'s median time in milliseconds (``None``: not timed)."""
        t = self.timings.get(impl)
        return None if t is None else t.median * 1e3

    def speedup(self) -> float | None:
        """The peer's time over lstmx's."""
        a, b = self.ms("lstmx"), self.ms(self.peer)
        return None if a is None or b is None else b / a

    def per_token(self) -> float | None:
        """varlen: throughput per useful token over the equal-length throughput."""
        a, b = self.ms("lstmx"), self.ms("lstmx equal")
        if self.tokens is None or a is None or b is None:
            return None
        return (self.tokens[0] / a) / (self.tokens[1] / b)

    def to_json(self) -> dict[str, Any]:
        """The row, its derived ratios and its timings' summaries, as JSON values."""
        return {"name": self.name, "mode": self.mode, "flops": self.flops, "peer": self.peer,
                "mismatch": self.mismatch, "tokens": self.tokens,
                "speedup": self.speedup(), "per_token": self.per_token(),
                "timings": {k: t.summary(self.flops) for k, t in self.timings.items()}}


def _rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1e-30, np.abs(b).max()))


def _fwd_flops(T: int, B: int, I: int, H: int) -> float:  # noqa: E741
    return 2.0 * T * B * 4 * H * (I + H)


def _varlen(env: Env, cfg: BenchConfig) -> list[tuple[LayerRow, dict[str, Callable[[], object]]]]:
    inp = make_inputs(cfg, np.dtype(np.float32))
    lengths = np.random.default_rng(0).integers(cfg.T // 2, cfg.T + 1, cfg.B)
    useful = int(lengths.sum())
    flops = _fwd_flops(1, useful, cfg.I, cfg.H)

    def train(lengths: AnyArray | None) -> object:
        y, _, _, tape = lstmx.lstm_train(*inp.args, lengths=lengths)
        return lstmx.lstm_backward(tape, inp.dy)

    fns: dict[str, dict[str, Callable[[], object]]] = {
        "infer": {"lstmx": lambda: lstmx.lstm(*inp.args, lengths=lengths),
                  "lstmx equal": lambda: lstmx.lstm(*inp.args)},
        "train": {"lstmx": lambda: train(lengths), "lstmx equal": lambda: train(None)}}
    mismatch = None
    if env.torch is not None:
        torch = env.torch
        rnn = torch.nn.utils.rnn
        mod = torch.nn.LSTM(cfg.I, cfg.H)
        with torch.no_grad():
            for name, arr in (("weight_ih_l0", inp.w_ih), ("weight_hh_l0", inp.w_hh),
                              ("bias_ih_l0", inp.b_ih), ("bias_hh_l0", inp.b_hh)):
                getattr(mod, name).copy_(torch.from_numpy(arr))
        x, lt = torch.from_numpy(inp.x), torch.from_numpy(lengths)
        xg = x.clone().requires_grad_(True)
        dy = rnn.pack_padded_sequence(torch.from_numpy(inp.dy), lt, enforce_sorted=False).data

        def t_infer() -> Any:
            with torch.inference_mode():
                return mod(rnn.pack_padded_sequence(x, lt, enforce_sorted=False))[0]

        def t_train() -> None:
            mod.zero_grad(set_to_none=True)
            xg.grad = None
            out, _ = mod(rnn.pack_padded_sequence(xg, lt, enforce_sorted=False))
            out.data.backward(dy)

        fns["infer"]["torch"], fns["train"]["torch"] = t_infer, t_train
        y_t = rnn.pad_packed_sequence(t_infer(), total_length=cfg.T)[0].numpy()
        mismatch = _rel(y_t, lstmx.lstm(*inp.args, lengths=lengths)[0])
    return [(LayerRow("varlen", m, flops * (1 if m == "infer" else 3), peer="torch",
                      mismatch=mismatch, tokens=(useful, cfg.T * cfg.B)), fns[m])
            for m in MODES]


def _layer_fns(m: lstmx.LSTM, x: AnyArray, dy: AnyArray
               ) -> dict[str, dict[str, Callable[[], object]]]:
    """The layer's calls, by mode: inference, and forward_train + backward."""
    def train() -> object:
        y, _, tape = m.forward_train(x)
        return m.backward(tape, dy)

    return {"infer": {"lstmx": lambda: m(x)}, "train": {"lstmx": train}}


def _bidir2(env: Env, cfg: BenchConfig) -> list[tuple[LayerRow, dict[str, Callable[[], object]]]]:
    m = lstmx.LSTM(cfg.I, cfg.H, num_layers=2, bidirectional=True, seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((cfg.T, cfg.B, cfg.I)).astype(np.float32)
    dy = rng.standard_normal((cfg.T, cfg.B, 2 * cfg.H)).astype(np.float32)
    flops = 2 * (_fwd_flops(cfg.T, cfg.B, cfg.I, cfg.H) + _fwd_flops(cfg.T, cfg.B, 2 * cfg.H,
                                                                        cfg.H))
    fns = _layer_fns(m, x, dy)
    mismatch = None
    if env.torch is not None:
        torch = env.torch
        mod = torch.nn.LSTM(cfg.I, cfg.H, num_layers=2, bidirectional=True)
        mod.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        xg = xt.clone().requires_grad_(True)

        def t_infer() -> Any:
            with torch.inference_mode():
                return mod(xt)[0]

        def t_train() -> None:
            mod.zero_grad(set_to_none=True)
            xg.grad = None
            mod(xg)[0].backward(dyt)

        fns["infer"]["torch"], fns["train"]["torch"] = t_infer, t_train
        mismatch = _rel(t_infer().numpy(), m(x)[0])
    return [(LayerRow("bidir2", md, flops * (1 if md == "infer" else 3), mismatch=mismatch),
             fns[md]) for md in MODES]


def torch_layernorm_lstm(torch: Any, I: int, H: int) -> Any:  # noqa: E741
    """A LayerNorm-LSTM written with torch ops, one cell a step, with lstmx's semantics:
    ``z = LN(x W_ih^T) + LN(h W_hh^T) + b``, ``h = o * tanh(LN(c))``."""

    class LayerNormLSTM(torch.nn.Module):  # type: ignore[misc]  # torch: Any
        def __init__(self) -> None:
            super().__init__()
            self.ih = torch.nn.Linear(I, 4 * H, bias=False)
            self.hh = torch.nn.Linear(H, 4 * H)
            self.ln_ih = torch.nn.LayerNorm(4 * H, bias=False)
            self.ln_hh = torch.nn.LayerNorm(4 * H, bias=False)
            self.ln_c = torch.nn.LayerNorm(H)

        def forward(self, x: Any) -> Any:
            h = c = x.new_zeros(x.shape[1], H)
            ys = []
            for t in range(x.shape[0]):
                z = self.ln_ih(self.ih(x[t])) + self.ln_hh(h @ self.hh.weight.T) + self.hh.bias
                i, f, g, o = z.chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(self.ln_c(c))
                ys.append(h)
            return torch.stack(ys)

    return LayerNormLSTM()


def _layernorm(env: Env, cfg: BenchConfig
               ) -> list[tuple[LayerRow, dict[str, Callable[[], object]]]]:
    try:
        m = lstmx.LSTM(cfg.I, cfg.H, layer_norm=True, seed=0)
    except NotImplementedError:
        return []
    rng = np.random.default_rng(2)
    x = rng.standard_normal((cfg.T, cfg.B, cfg.I)).astype(np.float32)
    dy = rng.standard_normal((cfg.T, cfg.B, cfg.H)).astype(np.float32)
    fns = _layer_fns(m, x, dy)
    mismatch = None
    if env.torch is not None:
        torch = env.torch
        mod = torch_layernorm_lstm(torch, cfg.I, cfg.H)
        p = m.named_parameters()
        with torch.no_grad():
            for dst, src in ((mod.ih.weight, "weight_ih_l0"), (mod.hh.weight, "weight_hh_l0"),
                             (mod.ln_ih.weight, "ln_gain_ih_l0"),
                             (mod.ln_hh.weight, "ln_gain_hh_l0"), (mod.ln_c.weight, "ln_gain_c_l0"),
                             (mod.ln_c.bias, "ln_bias_c_l0")):
                dst.copy_(torch.from_numpy(p[src]))
            mod.hh.bias.copy_(torch.from_numpy(p["bias_ih_l0"] + p["bias_hh_l0"]))
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        xg = xt.clone().requires_grad_(True)

        def t_infer() -> Any:
            with torch.inference_mode():
                return mod(xt)

        def t_train() -> None:
            mod.zero_grad(set_to_none=True)
            xg.grad = None
            mod(xg).backward(dyt)

        fns["infer"]["torch ops"], fns["train"]["torch ops"] = t_infer, t_train
        mismatch = _rel(t_infer().numpy(), m(x)[0])
    flops = _fwd_flops(cfg.T, cfg.B, cfg.I, cfg.H)
    return [(LayerRow("layernorm", md, flops * (1 if md == "infer" else 3), peer="torch ops",
                      mismatch=mismatch), fns[md]) for md in MODES]


def _stream(env: Env, cfg: BenchConfig) -> list[tuple[LayerRow, dict[str, Callable[[], object]]]]:
    m = lstmx.LSTM(STREAM, STREAM, seed=0)
    x = np.random.default_rng(3).standard_normal((1, STREAM)).astype(np.float32)
    state = m.initial_state(1)

    frozen, fstate = m.freeze(), m.initial_state(1)
    half, hstate = m.freeze(np.float16), m.initial_state(1)  # the weights rounded to float16
    q8, qstate = m.freeze(np.int8), m.initial_state(1)  # dynamic quantization

    def step() -> object:
        nonlocal state
        y, state = m.step(x, state)
        return y

    def frozen_step() -> object:
        nonlocal fstate
        y, fstate = frozen.step(x, fstate)
        return y

    def half_step() -> object:
        nonlocal hstate
        y, hstate = half.step(x, hstate)
        return y

    def int8_step() -> object:
        nonlocal qstate
        y, qstate = q8.step(x, qstate)
        return y

    # The floor: reading the weights once, as one GEMV [4H, I+H] x [I+H] (NumPy's BLAS)
    p = m.named_parameters()
    w = np.concatenate([p["weight_ih_l0"], p["weight_hh_l0"]], axis=1)
    v = np.concatenate([x[0], state.h[0, 0]])
    fns: dict[str, Callable[[], object]] = {"lstmx": step, "lstmx frozen": frozen_step,
                                            "lstmx float16": half_step, "lstmx int8": int8_step,
                                            "gemv": lambda: w @ v}
    # (float16 and int8 weights: not the same layer)
    mismatch = _rel(frozen.step(x)[0], m.step(x)[0])
    if env.torch is not None:
        torch = env.torch
        mod = torch.nn.LSTM(STREAM, STREAM)
        mod.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
        xt = torch.from_numpy(x[None])

        def per_step(lstm: Any) -> Callable[[], object]:
            hx = None

            def t_step() -> Any:
                nonlocal hx
                with torch.inference_mode():
                    y, hx = lstm(xt, hx)
                return y
            return t_step

        fns["torch"] = per_step(mod)
        with torch.inference_mode():
            mismatch = max(mismatch, _rel(mod(xt)[0].numpy()[0], m.step(x)[0]))
        # torch's own int8 step (torch.ao's dynamic quantization: int8 weights, activations
        # quantized per call), the peer of freeze(np.int8); skipped where it does not run
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                qmod = torch.ao.quantization.quantize_dynamic(
                    torch.nn.Sequential(mod), {torch.nn.LSTM}, dtype=torch.qint8)[0]
                with torch.inference_mode():
                    qmod(xt)
            fns["torch int8"] = per_step(qmod)
        except (AttributeError, RuntimeError):
            pass
    return [(LayerRow("stream", "infer", _fwd_flops(1, 1, STREAM, STREAM), mismatch=mismatch),
             fns)]


_BUILDERS = (_varlen, _bidir2, _layernorm, _stream)


def layer_steps(env: Env) -> int:
    """Progress steps of :func:`run_layer` (at most)."""
    return env.rounds * ((len(_BUILDERS) - 1) * len(MODES) * (3 if env.torch is not None else 2)
                         + 7)


def run_layer(env: Env, cfg: BenchConfig, prog: Progress) -> list[LayerRow]:
    """Time every variant row on ``cfg`` (float32, ``env.threads`` threads)."""
    rows = []
    for build in _BUILDERS:
        for row, fns in build(env, cfg):
            row.timings.update(measure_rounds(
                prog, f"layer {row.name} {row.mode}",
                [(impl, fn, env.budget, SETTLE) for impl, fn in fns.items()], env.rounds))
            rows.append(row)
    return rows


def format_layer(rows: Sequence[LayerRow], cfg: BenchConfig) -> str:
    """The layer rows as text: times, the speedup over the peer, and varlen's throughput."""
    out = [f"layer variants on {cfg.name} (I={cfg.I} H={cfg.H} B={cfg.B} T={cfg.T}), float32; "
           f"'vs peer': the peer's time / lstmx's",
           f"  {'variant':<10} {'mode':<6} {'lstmx ms':>9} {'peer':<12} {'peer ms':>9} "
           f"{'vs peer':>8}  notes"]
    for r in rows:
        notes = []
        pt = r.per_token()
        if pt is not None and r.tokens is not None:
            notes.append(f"per useful token {pt:.2f}x equal lengths "
                         f"({r.ms('lstmx equal'):.2f} ms for all {r.tokens[1]} tokens)")
        ms, peer_ms, gemv, fz = r.ms("lstmx"), r.ms(r.peer), r.ms("gemv"), r.ms("lstmx frozen")
        f16, i8, ti8 = r.ms("lstmx float16"), r.ms("lstmx int8"), r.ms("torch int8")
        if r.name == "stream" and ms is not None and gemv is not None:
            notes.append(f"B=1 I=H={STREAM}: {ms * 1e3:.1f} us a step"
                         + ("" if fz is None else f", frozen {fz * 1e3:.1f} us")
                         + ("" if f16 is None else f", float16 weights {f16 * 1e3:.1f} us")
                         + ("" if i8 is None else f", int8 weights {i8 * 1e3:.1f} us")
                         + ("" if peer_ms is None else f" (torch {peer_ms * 1e3:.1f} us"
                            + ("" if ti8 is None else f", int8 {ti8 * 1e3:.1f} us") + ")")
                         + f"; one GEMV of the weights (NumPy) takes {gemv * 1e3:.1f} us")
        if r.mismatch is not None and not r.mismatch <= 1e-3:
            notes.append(f"WARNING: the peer's output differs by {r.mismatch:.2g}")
        sp = r.speedup()
        out.append(f"  {r.name:<10} {r.mode:<6} {r.ms('lstmx') or 0:>9.2f} {r.peer:<12} "
                   f"{'-' if r.ms(r.peer) is None else format(r.ms(r.peer), '9.2f'):>9} "
                   f"{'-' if sp is None else format(sp, '.2f') + 'x':>8}  {'; '.join(notes)}")
    return "\n".join(out)


def layer_targets(rows: Sequence[LayerRow]) -> list[Target]:
    """:data:`LAYER_TARGETS` with the numbers measured (the worse of the two modes)."""
    var = [r for r in rows if r.name == "varlen"]
    out = []
    for text, get, bound in zip(LAYER_TARGETS[:2], (LayerRow.per_token, LayerRow.speedup),
                                (0.9, 1.5)):
        vals = [(v, r.mode) for r in var if (v := get(r)) is not None]
        if not vals:
            out.append(Target(text, "not measured", None))
            continue
        v, mode = min(vals)
        out.append(Target(text, f"min {v:.2f}x ({mode}; "
                                + ", ".join(f"{m} {x:.2f}x" for x, m in vals) + ")", v >= bound))
    st = next((r for r in rows if r.name == "stream"), None)
    us = None if st is None else st.ms("lstmx")
    if st is None or us is None:
        out.append(Target(LAYER_TARGETS[2], "not measured", None))
    else:  # the faster of the two float32 step APIs
        sp, fz = st.speedup(), st.ms("lstmx frozen")
        best = us if fz is None else min(us, fz)
        out.append(Target(LAYER_TARGETS[2], f"LSTM.step {us * 1e3:.1f} us"
                          + ("" if fz is None else f", FrozenLSTM.step {fz * 1e3:.1f} us")
                          + ("" if sp is None else f" (LSTM.step {sp:.1f}x faster than torch)"),
                          best * 1e3 <= 10))
    for text, impl in zip(LAYER_TARGETS[3:], ("lstmx float16", "lstmx int8")):
        t = None if st is None else st.ms(impl)
        out.append(Target(text, "not measured", None) if t is None else
                   Target(text, f"FrozenLSTM.step {t * 1e3:.1f} us", t * 1e3 <= 10))
    return out
