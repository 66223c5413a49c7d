"""Every public entry point of lstmx, described for the fuzz, soak and concurrency tests.

An :class:`Entry` is one call with named arguments: how to build a small valid case, which
arguments it takes and of what kind (the kind decides which bad values the fuzzers try). To
cover a new entry point (a layer variant, a framework adapter), add an Entry to ``ENTRIES``:
every fuzz test then covers it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from conftest import make_case

import lstmx
from lstmx import reference as R
from lstmx.layer import LayerTape

T, B, I, H = 3, 2, 4, 5  # the valid case: small, I != H, 4H = 20


@dataclass(frozen=True)
class Entry:
    """One public call. ``make(dtype)`` returns valid keyword arguments (``self`` for a method
    is passed too but never fuzzed); ``call(**kwargs)`` runs it. ``kinds`` maps each fuzzed
    argument to its kind (a key of ``test_errors.BAD``); ``optional`` arguments may be None;
    ``unimplemented`` ones may raise NotImplementedError naming them (valid but not done yet);
    ``bad`` adds entry-specific invalid values, each made by ``f(kwargs)``."""

    name: str
    call: Callable[..., Any]
    make: Callable[[np.dtype[Any]], dict[str, Any]]
    kinds: dict[str, str]
    optional: frozenset[str] = frozenset()
    unimplemented: frozenset[str] = frozenset()
    bad: dict[str, list[Callable[[dict[str, Any]], Any]]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return self.name


def arrays(result: Any) -> list[Any]:
    """The arrays and plain values of a result, flattened in order (tapes left out), for
    bitwise comparison."""
    if isinstance(result, dict):
        return [a for k in result for a in [k] + arrays(result[k])]
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in arrays(r)]
    if result is None or isinstance(result, (lstmx.Tape, LayerTape)):
        return []
    return [np.asarray(result)]


def case(dt: np.dtype[Any], batch_first: bool = False) -> dict[str, Any]:
    return make_case(T, B, I, H, dt, seed=1, batch_first=batch_first)


def _seq(dt: np.dtype[Any]) -> dict[str, Any]:
    return dict(case(dt), batch_first=False)


def _cell(dt: np.dtype[Any]) -> dict[str, Any]:
    c = case(dt)
    return dict(x=c["x"][0], w_ih=c["w_ih"], w_hh=c["w_hh"], b_ih=c["b_ih"], b_hh=c["b_hh"],
                h=c["h0"], c=c["c0"])


def _grads(dt: np.dtype[Any], cell: bool) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    if cell:
        *_, tape = lstmx.lstm_cell_train(**_cell(dt))
        dh, dc = rng.standard_normal((2, B, H)).astype(dt)
        return dict(tape=tape, dh=dh, dc=dc)
    *_, tape = lstmx.lstm_train(**case(dt))
    return dict(tape=tape, dy=rng.standard_normal((T, B, H)).astype(dt),
                dh_n=rng.standard_normal((B, H)).astype(dt),
                dc_n=rng.standard_normal((B, H)).astype(dt))


# The layer of the call entries: a stack with dropout and random masks (L * D = 4 states).
LAYER = dict(num_layers=2, bidirectional=True, dropout=0.5, peephole=True, zoneout_c=0.2,
             recurrent_dropout=0.25)
LAYER_KINDS = dict(input_size="size", hidden_size="size", num_layers="size", bias="flag",
                   batch_first="flag", dropout="probability", bidirectional="flag",
                   proj_size="count", dtype="dtype", seed="seed", peephole="flag",
                   clip="threshold", input_forget="flag", forget_bias="real", reverse="flag",
                   layer_norm="flag", zoneout_h="probability", zoneout_c="probability",
                   recurrent_dropout="probability")


def _layer(dt: np.dtype[Any], seed: int = 3) -> lstmx.LSTM:
    return lstmx.LSTM(I, H, dtype=dt, seed=seed, **LAYER)


def _layer_args(dt: np.dtype[Any]) -> dict[str, Any]:
    """Every constructor argument, valid, most of them not the default."""
    return dict(input_size=I, hidden_size=H, num_layers=2, bias=True, batch_first=False,
                dropout=0.25, bidirectional=True, proj_size=0, dtype=dt, seed=0, peephole=True,
                clip=3.0, input_forget=False, forget_bias=1.0, reverse=False, layer_norm=False,
                zoneout_h=0.1, zoneout_c=0.2, recurrent_dropout=0.1)


def _layer_x(dt: np.dtype[Any], seed: int | None = None) -> dict[str, Any]:
    c = case(dt)
    state = np.stack([c["h0"]] * 4), np.stack([c["c0"]] * 4)
    return dict(self=_layer(dt), x=c["x"], hx=state, lengths=[3, 1],
                **({} if seed is None else dict(seed=seed)))


def _layer_step(dt: np.dtype[Any]) -> dict[str, Any]:
    """LSTM.step with a projection (P = 3), peepholes, clip and zoneout, from a given state."""
    c = case(dt)
    m = lstmx.LSTM(I, H, num_layers=2, proj_size=3, peephole=True, clip=3.0, zoneout_h=0.1,
                   dtype=dt, seed=3)
    return dict(self=m, x=c["x"][0], state=(np.stack([c["h0"][:, :3]] * 2),
                                            np.stack([c["c0"]] * 2)))


def _frozen_step(dt: np.dtype[Any]) -> dict[str, Any]:
    """FrozenLSTM.step as _layer_step, on float16 panels where the layer is float32."""
    kw = _layer_step(dt)
    return dict(kw, self=kw["self"].freeze(np.float16 if dt == np.float32 else None))


def _int8_step(dt: np.dtype[Any]) -> dict[str, Any]:
    """FrozenLSTM.step as _layer_step, on int8 panels where the layer is float32."""
    kw = _layer_step(dt)
    return dict(kw, self=kw["self"].freeze(np.int8 if dt == np.float32 else None))


def _int8_x(dt: np.dtype[Any]) -> dict[str, Any]:
    """FrozenLSTM.__call__ (step by step with int8 panels where the layer is float32)."""
    kw = _int8_step(dt)
    return dict(self=kw["self"], x=case(dt)["x"], hx=kw["state"], lengths=[3, 1])


def _layer_backward(dt: np.dtype[Any]) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    m = _layer(dt)
    y, (hn, cn), tape = m.forward_train(case(dt)["x"], lengths=[3, 1], seed=4)
    dy, dh_n, dc_n = (rng.standard_normal(a.shape).astype(dt) for a in (y, hn, cn))
    return dict(self=m, tape=tape, dy=dy, dh_n=dh_n, dc_n=dc_n)


def _other_layer_tape(functional: bool) -> Callable[[dict[str, Any]], Any]:
    """A tape LSTM.backward refuses with a ValueError: a functional one, or another layer's."""
    def make(kw: dict[str, Any]) -> Any:
        dt = kw["self"].dtype
        return lstmx.lstm_train(**case(dt))[3] if functional else \
            _layer(dt).forward_train(case(dt)["x"])[2]
    return make


BAD_LENGTHS: list[Callable[[dict[str, Any]], Any]] = [lambda kw: [T + 1, 1],
                                                       lambda kw: [1] * (B + 1)]


def _other_tape(cell: bool) -> Callable[[dict[str, Any]], Any]:
    """A tape of the other kind (sequence for cell, cell for sequence): a ValueError."""
    def make(kw: dict[str, Any]) -> Any:
        dt = kw["tape"]._dtype
        return lstmx.lstm_train(**case(dt))[3] if cell else lstmx.lstm_cell_train(**_cell(dt))[2]
    return make


SEQ_KINDS = dict(x="array", w_ih="array", w_hh="array", b_ih="array", b_hh="array",
                 h0="array", c0="array", batch_first="flag")
SEQ_OPTIONAL = frozenset({"b_ih", "b_hh", "h0", "c0"})
# lstm's variants, valid and not the default (lstm_train adds its masks' arguments)
VARIANT_KINDS = dict(lengths="lengths", reverse="flag", peephole="array", clip="threshold",
                     input_forget="flag", zoneout_h="probability", zoneout_c="probability")
VARIANT_OPTIONAL = frozenset({"lengths", "peephole", "clip"})
TRAIN_KINDS = dict(recurrent_dropout="probability", seed="seed", stream="count")


def _variant(dt: np.dtype[Any], train: bool, proj: bool = False) -> dict[str, Any]:
    c = dict(_seq(dt), lengths=[3, 1], reverse=True,
             peephole=np.linspace(-1, 1, 3 * H).reshape(3, H).astype(dt), clip=2.0,
             input_forget=True, zoneout_h=0.2, zoneout_c=0.3)
    if proj:  # P = 2: w_hh [4H, P], h0 [B, P]
        c.update(w_hr=np.linspace(-1, 1, 2 * H).reshape(2, H).astype(dt),
                 w_hh=c["w_hh"][:, :2].copy(), h0=c["h0"][:, :2].copy())
    return dict(c, recurrent_dropout=0.25, seed=7, stream=3) if train else c
CELL_KINDS = dict(x="array", w_ih="array", w_hh="array", b_ih="array", b_hh="array", h="array",
                  c="array")
CELL_OPTIONAL = frozenset({"b_ih", "b_hh", "h", "c"})


def _set_threads(n: Any) -> int:
    old = lstmx.get_num_threads()
    try:
        lstmx.set_num_threads(n)
        return lstmx.get_num_threads()
    finally:
        lstmx.set_num_threads(old)


def _ref_grads(dt: np.dtype[Any]) -> dict[str, Any]:
    g = _grads(dt, cell=False)
    del g["tape"]
    return dict(g, cache=R.lstm_forward(**case(dt))[3])


def _tape(dt: np.dtype[Any]) -> dict[str, Any]:
    t = _grads(dt, cell=False)["tape"]
    return dict(cache=t._cache, has_bias=True, cell=False, dtype=t._dtype)


ENTRIES = [
    # ---- the functional API ----
    Entry("lstm", lstmx.lstm, _seq, SEQ_KINDS, SEQ_OPTIONAL),
    Entry("lstm_train", lstmx.lstm_train, _seq, SEQ_KINDS, SEQ_OPTIONAL),
    Entry("lstm (variants)", lstmx.lstm, lambda dt: _variant(dt, False),
          dict(SEQ_KINDS, **VARIANT_KINDS), SEQ_OPTIONAL | VARIANT_OPTIONAL),
    Entry("lstm_train (variants, projection)", lstmx.lstm_train,
          lambda dt: _variant(dt, True, proj=True),
          dict(SEQ_KINDS, **VARIANT_KINDS, **TRAIN_KINDS, w_hr="array"),
          SEQ_OPTIONAL | VARIANT_OPTIONAL | {"seed", "w_hr"}),
    Entry("lstm_backward", lstmx.lstm_backward, lambda dt: _grads(dt, cell=False),
          dict(tape="object", dy="array", dh_n="array", dc_n="array"),
          frozenset({"dy", "dh_n", "dc_n"}), bad=dict(tape=[_other_tape(cell=False)])),
    Entry("lstm_cell", lstmx.lstm_cell, _cell, CELL_KINDS, CELL_OPTIONAL),
    Entry("lstm_cell_train", lstmx.lstm_cell_train, _cell, CELL_KINDS, CELL_OPTIONAL),
    Entry("lstm_cell_backward", lstmx.lstm_cell_backward, lambda dt: _grads(dt, cell=True),
          dict(tape="object", dh="array", dc="array"), frozenset({"dh", "dc"}),
          bad=dict(tape=[_other_tape(cell=True)])),
    Entry("Tape", lambda **k: repr(lstmx.Tape(**k)), _tape, dict(cache="object", dtype="object")),
    # ---- the layer ----
    Entry("LSTM", lambda **k: lstmx.LSTM(**k).state_dict(), _layer_args, LAYER_KINDS,
          frozenset({"seed", "clip", "forget_bias"}),
          bad=dict(reverse=[lambda kw: True], recurrent_dropout=[lambda kw: 1.0],
                   proj_size=[lambda kw: H])),
    Entry("LSTM.__call__", lambda self, **k: self(**k), _layer_x,
          dict(x="array", hx="object", lengths="lengths"), frozenset({"hx", "lengths"}),
          bad=dict(lengths=BAD_LENGTHS)),
    Entry("LSTM.forward_train", lambda self, **k: self.forward_train(**k),
          lambda dt: _layer_x(dt, seed=5),  # a fixed seed: the same masks in every call
          dict(x="array", hx="object", lengths="lengths", seed="seed"),
          frozenset({"hx", "lengths"}), bad=dict(lengths=BAD_LENGTHS)),
    Entry("LSTM.backward", lambda self, **k: self.backward(**k), _layer_backward,
          dict(tape="object", dy="array", dh_n="array", dc_n="array"),
          frozenset({"dy", "dh_n", "dc_n"}),
          bad=dict(tape=[_other_layer_tape(True), _other_layer_tape(False)])),
    Entry("LSTM.step", lambda self, **k: self.step(**k), _layer_step,
          dict(x="array", state="object"), frozenset({"state"})),
    Entry("FrozenLSTM.step (float16 weights in float32)", lambda self, **k: self.step(**k),
          _frozen_step, dict(x="array", state="object"), frozenset({"state"})),
    Entry("FrozenLSTM.step (int8 weights in float32)", lambda self, **k: self.step(**k),
          _int8_step, dict(x="array", state="object"), frozenset({"state"})),
    Entry("FrozenLSTM.__call__ (int8 weights in float32)", lambda self, **k: self(**k),
          _int8_x, dict(x="array", hx="object", lengths="lengths"),
          frozenset({"hx", "lengths"}), bad=dict(lengths=BAD_LENGTHS)),
    Entry("LSTM.load_state_dict",
          lambda self, **k: (self.load_state_dict(**k), self.state_dict())[1],
          lambda dt: dict(self=_layer(dt), state=_layer(np.dtype(np.float32), seed=4)
                          .state_dict(), strict=True),
          dict(state="object", strict="flag")),
    # ---- threads ----
    Entry("set_num_threads", _set_threads, lambda dt: dict(n=2), dict(n="size"),
          bad=dict(n=[lambda kw: lstmx._MAX_THREADS + 1])),
    # ---- the NumPy reference ----
    Entry("reference.sigmoid", R.sigmoid,
          lambda dt: dict(z=np.linspace(-30, 30, 7).astype(dt)), dict(z="any-shape array")),
    Entry("reference.lstm_forward", R.lstm_forward, _seq, SEQ_KINDS, SEQ_OPTIONAL),
    Entry("reference.lstm_backward", R.lstm_backward,
          _ref_grads,
          dict(cache="object", dy="array", dh_n="array", dc_n="array"),
          frozenset({"dy", "dh_n", "dc_n"})),
    Entry("reference.to_seed_params", R.to_seed_params,
          lambda dt: {k: case(dt)[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")},
          dict(w_ih="array", w_hh="array", b_ih="array", b_hh="array"),
          frozenset({"b_ih", "b_hh"})),
    Entry("reference.from_seed_params", R.from_seed_params,
          lambda dt: dict(p=R.to_seed_params(**{k: case(dt)[k] for k in ("w_ih", "w_hh")})),
          dict(p="object")),
    Entry("reference.seed_lstm_forward", R.seed_lstm_forward,
          lambda dt: dict(x=case(dt)["x"], p=R.to_seed_params(case(dt)["w_ih"],
                                                             case(dt)["w_hh"]),
                          h0=case(dt)["h0"], c0=case(dt)["c0"]),
          dict(x="array", p="object", h0="array", c0="array"), frozenset({"h0", "c0"})),
]

# Entry points without arguments: they run, and return what they document.
NO_ARGS: list[tuple[str, Callable[[], Any]]] = [
    ("get_num_threads", lstmx.get_num_threads),
    ("config", lstmx.config),
    ("show_config", lstmx.show_config),
    ("LSTM.state_dict", lambda: _layer(np.dtype(np.float32)).state_dict()),
    ("LSTM.named_parameters", lambda: _layer(np.dtype(np.float32)).named_parameters()),
    ("LSTM.__repr__", lambda: repr(_layer(np.dtype(np.float64)))),
    ("Tape.__repr__ and nbytes", lambda: (repr(_grads(np.dtype(np.float32), False)["tape"]),
                                          _grads(np.dtype(np.float32), False)["tape"].nbytes)),
]
