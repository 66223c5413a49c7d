"""``lstmx.LSTM``: a stacked, optionally bidirectional LSTM layer that holds its parameters,
named and shaped as in ``torch.nn.LSTM``, with lstmx's variants (see ``docs/variants.md``).

One layer ``k`` and direction ``d`` is one call of :mod:`lstmx.functional` (a "pass"); the
layer chains them: layer ``k > 0`` takes layer ``k - 1``'s output ``[fwd | rev]``, with
between-layer dropout in training.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import operator
import os
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from . import _core
from .functional import (AnyArray, Array, ArrayLike, LSTMGrads, Tape, _c_array, _check_args,
                         _check_clip, _check_lengths, _check_memory, _flag, _float_array,
                         _backward, _forward, _probability, _to_numpy, _uint64, _variant)

__all__ = ["LSTM", "FrozenLSTM", "LayerTape", "StreamState", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1
"""The version of :meth:`LSTM.save`'s file layout; :func:`load` reads this version only."""
_FORMAT_KEY, _CONFIG_KEY = "lstmx_format", "lstmx_config"

State = tuple[Array, Array]
_LN = ("ln_gain_ih", "ln_gain_hh", "ln_gain_c", "ln_bias_c")  # the layer norm's, in order
_EXTRAS = ("peephole_", "ln_")  # lstmx-only parameters: initialised after PyTorch's own


class StreamState(NamedTuple):
    """The state of :meth:`LSTM.step` between steps: ``h [L, B, R]`` and ``c [L, B, H]``
    (``L = num_layers``, ``R = proj_size or hidden_size``), layer ``k`` at index ``k``; the
    layout of ``lstm(x)``'s ``(h_n, c_n)``, so either can seed the other. A plain tuple
    ``(h, c)`` of those shapes is accepted too."""

    h: Array
    c: Array


class _StepPass(NamedTuple):
    """One layer's checked arguments for :meth:`LSTM.step`."""

    # _core.step_plan's layer (w_ih, w_hh, b_ih, b_hh, w_hr, peephole[, packed])
    layer: tuple[Any, ...]
    kw: dict[str, Any]  # _core.forward's keywords (the layer-norm path)


class _StepPlan(NamedTuple):
    """:meth:`LSTM.step`'s checked arguments for every layer, with the parameter arrays they
    came from: the cache's key (the arrays are read at call time, so in-place updates count;
    a replaced array makes a new plan)."""

    names: tuple[str, ...]  # the parameters' attribute names
    params: tuple[Array | None, ...]  # the arrays themselves
    passes: list[_StepPass]
    options: tuple[float, bool, float, float]  # clip, input_forget, zoneout h, c
    core: Any  # _core.step_plan's of layers and options (None with layer norm)


class _FrozenPass(NamedTuple):
    """One pass's checked arguments of ``_core.forward``, its weights packed once."""

    weights: tuple[Array, Array, Array | None]  # w_ih, w_hh, b_ih + b_hh
    kw: dict[str, Any]  # the variants' keywords (but lengths and reverse) and packed


class LayerTape:
    """Opaque record of :meth:`LSTM.forward_train`; pass it to :meth:`LSTM.backward` of the
    layer that made it (any number of times).

    It holds one :class:`lstmx.Tape` per layer and direction and the between-layer dropout
    masks, so later changes to the parameters do not affect backward.
    """

    __slots__ = ("_layer", "_tapes", "_masks", "_T", "_B", "_unbatched")

    def __init__(self, layer: LSTM, tapes: list[Tape], masks: list[Array | None], T: int,
                 B: int, unbatched: bool) -> None:
        self._layer = layer
        self._tapes = tapes  # index k * D + d, as h0
        self._masks = masks  # [T, B, D * R] ([B, T, ...] batch_first) after layer k, or None
        self._T, self._B, self._unbatched = T, B, unbatched

    @property
    def nbytes(self) -> int:
        """Bytes held by the passes' workspaces and the dropout masks."""
        return sum(t.nbytes for t in self._tapes) + sum(m.nbytes for m in self._masks
                                                        if m is not None)

    def __repr__(self) -> str:
        return (f"<lstmx.LayerTape of {self._layer!r} T={self._T} B={self._B} "
                f"nbytes={self.nbytes}>")


def _size(name: str, v: object, low: int) -> int:
    """An int argument, at least ``low``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if v < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
    return int(v)


def _real(name: str, v: object) -> float:
    """A finite real number (not a bool)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                             np.floating)):
        raise TypeError(f"{name}: expected a float, got {type(v).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    return float(v)


class LSTM:
    """A multi-layer LSTM with PyTorch's arguments, parameter names, layout and shapes.

    The first eight arguments are ``torch.nn.LSTM``'s, in its order. ``dtype`` (float32 or
    float64) is that of the parameters and of every input; ``seed`` (an int or ``None``)
    seeds the initialisation and the layer's own generator of training-mask seeds.

    lstmx's variants apply to every layer and direction:
    ``peephole`` (parameters ``peephole_l{k}{sfx} [3, H]``), ``clip`` (clamp the gate
    pre-activations to ``[-clip, clip]``), ``input_forget`` (``f = 1 - i``), ``forget_bias``
    (initial forget-gate bias: ``bias_ih``'s slice ``[H:2H]`` set to it, ``bias_hh``'s to 0;
    not with ``input_forget``),
    ``reverse`` (run each sequence backwards; not with ``bidirectional``), ``zoneout_h``,
    ``zoneout_c`` (random in training, their expectation at inference) and
    ``recurrent_dropout`` (training only); ``layer_norm`` (Haste's LayerNorm-LSTM: parameters
    ``ln_gain_ih_l{k}{sfx}, ln_gain_hh_l{k}{sfx} [4H]`` (gains 1), ``ln_gain_c_l{k}{sfx}``
    (gains 1) and ``ln_bias_c_l{k}{sfx} [H]`` (0)).
    ``dropout`` applies to every layer's output but the last, in training (with one layer
    it has no effect, and a warning says so, as in PyTorch). With
    ``proj_size = P > 0``, ``h = (o * tanh(c)) weight_hr^T`` has ``P`` units (PyTorch's
    projection), and ``weight_hr_l{k}{sfx} [P, H]`` joins the parameters.

    Parameters ``weight_ih_l{k}{sfx} [4H, I_k]``, ``weight_hh_l{k}{sfx} [4H, R]``,
    ``bias_ih_l{k}{sfx}, bias_hh_l{k}{sfx} [4H]`` (``sfx`` is ``""`` or ``"_reverse"``,
    ``R = proj_size or H``, ``I_0 = input_size``, ``I_k = D * R``) are NumPy arrays in
    PyTorch's order, initialised like PyTorch: uniform in ``[-1/sqrt(H), 1/sqrt(H)]`` from
    ``numpy.random.default_rng(seed)`` (PyTorch's parameters first, so the extras do not change
    them).

    ``lstm(x, (h0, c0), lengths)`` returns ``(y, (h_n, c_n))`` with PyTorch's shapes:
    ``x [T, B, I]`` (``[B, T, I]`` with ``batch_first``, or ``[T, I]`` unbatched),
    ``y [T, B, D * R]``, states ``h [L * D, B, R]`` and ``c [L * D, B, H]`` (no ``B``
    unbatched), index ``k * D + d``. ``lengths [B]`` (ints in ``[0, T]``, any order) ends each
    sequence early: ``y`` is 0 past its end and ``h_n, c_n`` are its state at its end.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, *,
                 dtype: type | np.dtype[Any] | str = np.float32, seed: int | None = None,
                 peephole: bool = False, clip: float | None = None, input_forget: bool = False,
                 forget_bias: float | None = None, reverse: bool = False,
                 layer_norm: bool = False, zoneout_h: float = 0.0, zoneout_c: float = 0.0,
                 recurrent_dropout: float = 0.0) -> None:
        # ---- every argument checked; then the unimplemented ones refused ----
        self.input_size = _size("input_size", input_size, 1)
        self.hidden_size = _size("hidden_size", hidden_size, 1)
        self.num_layers = _size("num_layers", num_layers, 1)
        self.bias = _flag("bias", bias)
        self.batch_first = _flag("batch_first", batch_first)
        self.dropout = _probability("dropout", dropout)
        if self.dropout > 0 and self.num_layers == 1:  # as torch.nn.LSTM does
            warnings.warn(f"dropout: applies between layers only, so it has no effect with "
                          f"num_layers=1 (got dropout={self.dropout})", stacklevel=2)
        self.bidirectional = _flag("bidirectional", bidirectional)
        self.proj_size = _size("proj_size", proj_size, 0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size: expected less than hidden_size = {self.hidden_size}, "
                             f"got {self.proj_size}")
        try:
            self.dtype = np.dtype(dtype)
        except (TypeError, ValueError) as e:
            raise TypeError(f"dtype: {e}") from None
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        seed = None if seed is None else _uint64("seed", seed)
        self.peephole = _flag("peephole", peephole)
        self.clip = _check_clip(clip)
        self.input_forget = _flag("input_forget", input_forget)
        self.forget_bias = None if forget_bias is None else _real("forget_bias", forget_bias)
        if self.forget_bias is not None and not self.bias:
            raise ValueError("forget_bias: needs bias=True")
        if self.forget_bias is not None and self.input_forget:
            raise ValueError("forget_bias: has no effect with input_forget=True (the forget gate "
                             "is 1 - i there)")
        self.reverse = _flag("reverse", reverse)
        if self.reverse and self.bidirectional:
            raise ValueError("reverse: not with bidirectional=True (its second direction "
                             "already runs in reverse)")
        self.layer_norm = _flag("layer_norm", layer_norm)
        self.zoneout_h = _probability("zoneout_h", zoneout_h)
        self.zoneout_c = _probability("zoneout_c", zoneout_c)
        self.recurrent_dropout = _probability("recurrent_dropout", recurrent_dropout,
                                              closed=False)

        # ---- the parameters ----
        nbytes = self._parameter_count() * (8 + self.dtype.itemsize)  # + the float64 draws
        _check_memory("input_size, hidden_size, num_layers", nbytes,
                      f"the parameters of {self!r}")
        self._shapes = self._parameter_shapes()
        seeds = np.random.SeedSequence(seed)
        init = np.random.default_rng(seeds)
        self._mask_seeds = np.random.default_rng(seeds.spawn(1)[0])  # forward_train(seed=None)
        k = 1.0 / np.sqrt(self.hidden_size)
        order = sorted(self._shapes, key=lambda n: n.startswith(_EXTRAS))  # PyTorch's first
        for name in order:
            shape = self._shapes[name]
            if name.startswith("ln_"):  # layer norm: gains 1, bias 0
                a = np.full(shape, 0.0 if name.startswith("ln_bias") else 1.0)
            else:
                a = init.uniform(-k, k, shape)
            setattr(self, name, a.astype(self.dtype))
        if self.forget_bias is not None:  # the forget gate's slice of every bias
            H = self.hidden_size
            for name in self._shapes:
                if name.startswith("bias_"):
                    getattr(self, name)[H:2 * H] = 0.0 if "_hh_" in name else self.forget_bias

    # ---- the parameter table ----
    @property
    def _D(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _R(self) -> int:
        """The size of h: proj_size, or hidden_size without projection."""
        return self.proj_size or self.hidden_size

    def _pass_sizes(self, I: int) -> dict[str, tuple[int, ...]]:
        """The parameters of one pass with ``I`` input features, by name without suffix."""
        H, R, P = self.hidden_size, self._R, self.proj_size
        s: dict[str, tuple[int, ...]] = {"weight_ih": (4 * H, I), "weight_hh": (4 * H, R)}
        if self.bias:
            s.update(bias_ih=(4 * H,), bias_hh=(4 * H,))
        if P:
            s.update(weight_hr=(P, H))
        if self.peephole:
            s.update(peephole=(3, H))
        if self.layer_norm:
            s.update(ln_gain_ih=(4 * H,), ln_gain_hh=(4 * H,), ln_gain_c=(H,), ln_bias_c=(H,))
        return s

    def _parameter_count(self) -> int:
        """How many numbers the parameters hold (without building the table)."""
        def count(I: int) -> int:
            return sum(math.prod(s) for s in self._pass_sizes(I).values())
        return self._D * (count(self.input_size)
                          + (self.num_layers - 1) * count(self._D * self._R))

    def _parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, in PyTorch's order (the extras after each pass's)."""
        return {f"{n}_{self._pass_name(k, d)}": s for k in range(self.num_layers)
                for d in range(self._D)
                for n, s in self._pass_sizes(self.input_size if k == 0
                                             else self._D * self._R).items()}

    @staticmethod
    def _pass_name(k: int, d: int) -> str:
        return f"l{k}{'_reverse' if d else ''}"

    def _pass_params(self, k: int, d: int) -> dict[str, Array | None]:
        """Pass (k, d)'s parameters, by name without suffix (absent ones None)."""
        sfx = "_" + self._pass_name(k, d)
        p = {n: getattr(self, n + sfx, None) for n in ("weight_ih", "weight_hh", "bias_ih",
                                                       "bias_hh", "weight_hr", "peephole")}
        p["layer_norm"] = tuple(getattr(self, n + sfx) for n in _LN) if self.layer_norm else None
        return p

    # ---- parameters ----
    def named_parameters(self) -> dict[str, Array]:
        """The parameter arrays themselves (not copies), by PyTorch name in PyTorch's order;
        update them in place."""
        return {name: getattr(self, name) for name in self._shapes}

    def state_dict(self) -> dict[str, Array]:
        """Copies of the parameters, by PyTorch name."""
        return {name: a.copy() for name, a in self.named_parameters().items()}

    def load_state_dict(self, state: Mapping[str, ArrayLike], strict: bool = True) -> None:
        """Load parameters from any array-likes (NumPy arrays, torch tensors, lists).

        Values are cast to the layer's dtype. With ``strict``, the keys must match exactly.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state: expected a mapping of name to array, got "
                            f"{type(state).__name__}")
        missing = [k for k in self._shapes if k not in state]
        unexpected = [k for k in state if k not in self._shapes]
        if _flag("strict", strict) and (missing or unexpected):
            raise ValueError(f"state: missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for name in self._shapes:
            if name not in state:
                continue
            a = _to_numpy(name, state[name])
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
            if a.shape != self._shapes[name]:
                raise ValueError(f"{name}: expected shape {self._shapes[name]}, got {a.shape}")
            new[name] = a
        for name, a in new.items():  # all checked first: a failed load changes nothing
            getattr(self, name)[...] = a  # in place: references from named_parameters() stay live

    # ---- input checks ----
    def _state(self, name: str, s: ArrayLike | None, B: int, unbatched: bool) -> Array | None:
        """A state ``[L * D, B, N]`` (``[L * D, N]`` unbatched) as ``[L * D, B, N]``, where N is
        R for h0 and dh_n, H for c0 and dc_n."""
        if s is None:
            return None
        LD, N = self.num_layers * self._D, self._R if "h" in name else self.hidden_size
        want = (LD, N) if unbatched else (LD, B, N)
        n = "P" if self.proj_size and "h" in name else "H"
        desc = f"[num_layers * num_directions, {'' if unbatched else 'B, '}{n}]"
        a = _float_array(name, s, self.dtype, "the layer")
        if a.shape != want:
            what = f"the shape of {name[1:]}," if name.startswith("d") else "shape"
            raise ValueError(f"{name}: expected {what} {desc} = {want}, got {a.shape}")
        return a.reshape(LD, B, N)

    def _prepare(self, x: ArrayLike, hx: tuple[ArrayLike, ArrayLike] | None,
                 lengths: ArrayLike | None
                 ) -> tuple[AnyArray, Array | None, Array | None, AnyArray | None, bool]:
        """x as 3-D, h0 and c0 as ``[L * D, B, R]`` and ``[L * D, B, H]``, lengths as int64; and
        whether x is 2-D."""
        xa = _float_array("x", x, self.dtype, "the layer")
        unbatched = xa.ndim == 2
        if unbatched:
            xa = xa[None] if self.batch_first else xa[:, None]
        elif xa.ndim != 3:
            desc = "[B, T, I]" if self.batch_first else "[T, B, I]"
            raise ValueError(f"x: expected a 3-D array {desc} or a 2-D unbatched [T, I], got a "
                             f"{xa.ndim}-D array of shape {xa.shape}")
        if xa.shape[2] != self.input_size:
            raise ValueError(f"x: expected {self.input_size} input features in the last axis, "
                             f"got shape {xa.shape}")
        T, B = (xa.shape[1], xa.shape[0]) if self.batch_first else xa.shape[:2]
        h0 = c0 = None
        if hx is not None:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"hx: expected a tuple (h0, c0), got {type(hx).__name__}")
            h0, c0 = (self._state(n, s, B, unbatched) for n, s in zip(("h0", "c0"), hx))
        if lengths is not None:
            if unbatched:
                raise ValueError("lengths: needs batched (3-D) x")
            lengths = _check_lengths(lengths, T, B)
        return xa, h0, c0, lengths, unbatched

    # ---- forward / backward ----
    def _run(self, x: ArrayLike, hx: tuple[ArrayLike, ArrayLike] | None,
             lengths: ArrayLike | None, seed: int | None, training: bool,
             frozen: list[_FrozenPass] | None = None) -> tuple[Array, State, LayerTape | None]:
        xa, h0, c0, lens, unbatched = self._prepare(x, hx, lengths)
        D, L, H, R = self._D, self.num_layers, self.hidden_size, self._R
        T, B = (xa.shape[1], xa.shape[0]) if self.batch_first else xa.shape[:2]
        # beyond each pass's own check: the tapes of every pass are kept together in training
        rows, width = T * B, max(self.input_size, D * R)
        per_pass = rows * (width + (15 if training else 5) * H + D * R) * self.dtype.itemsize
        _check_memory("x", per_pass * (L * D if training else 1),
                      lambda: f"{self!r} over T*B = {rows} rows")  # (repr costs ~0.15 ms)
        mask_seed = 0  # the random masks' (training only)
        if training:
            mask_seed = int(self._mask_seeds.integers(2**64, dtype=np.uint64)) \
                if seed is None else _uint64("seed", seed)
        hn, cn = np.empty((L * D, B, R), self.dtype), np.empty((L * D, B, H), self.dtype)
        tapes: list[Tape] = []
        masks: list[Array | None] = []
        inp = xa
        for k in range(L):
            # Both directions write into their halves of one y: no concatenation after.
            both = None if D == 1 else np.empty((B, T, D * R) if self.batch_first
                                                else (T, B, D * R), self.dtype)
            # Dropout before the next layer, fused into the passes: each also writes its half
            # of y * mask into dropped (and backward multiplies dy by the mask as it reads it).
            mask = self._dropout_mask(mask_seed, k, T, B) \
                if training and k < L - 1 and self.dropout else None
            dropped = None if mask is None else np.empty_like(mask)
            if training and k < L - 1:
                masks.append(mask)
            for d in range(D):
                j, cols = k * D + d, slice(d * R, (d + 1) * R)
                out = None if both is None else both[..., cols]
                if frozen is not None:  # every argument but x, h0, c0 checked already
                    fp, h0j, c0j = frozen[j], *(None if s is None else _c_array(s[j])
                                                for s in (h0, c0))
                    fkw = fp.kw if lens is None else {**fp.kw, "lengths": lens}
                    if self.reverse or d == 1:
                        fkw = {**fkw, "reverse": True}
                    yd, hn[j], cn[j], _ = _core.forward(
                        _c_array(inp), *fp.weights, h0j, c0j, self.batch_first, False, **fkw,
                        y_out=out)
                    continue
                p = self._pass_params(k, d)
                kw: dict[str, Any] = dict(
                    lengths=lens, reverse=self.reverse or d == 1, peephole=p["peephole"],
                    layer_norm=p["layer_norm"], clip=self.clip, input_forget=self.input_forget,
                    zoneout_h=self.zoneout_h, zoneout_c=self.zoneout_c)
                if training:
                    kw.update(recurrent_dropout=self.recurrent_dropout, seed=mask_seed,
                              stream=8 * (2 * k + d))
                yd, hn[j], cn[j], tape = _forward(
                    inp, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"],
                    None if h0 is None else h0[j], None if c0 is None else c0[j],
                    self.batch_first, training, w_hr=p["weight_hr"], y_out=out,
                    drop=None if mask is None else mask[..., cols],
                    y_drop=None if dropped is None else dropped[..., cols], **kw)
                if training:
                    tapes.append(tape)
            inp = dropped if dropped is not None else yd if both is None else both
        y = inp
        if unbatched:
            y, hn, cn = (y[0] if self.batch_first else y[:, 0]), hn[:, 0], cn[:, 0]
        return y, (hn, cn), LayerTape(self, tapes, masks, T, B, unbatched) if training else None

    def _dropout_mask(self, seed: int, k: int, T: int, B: int) -> Array:
        """The between-layer dropout mask after layer k, ``[T, B, D * R]`` (``[B, T, ...]``
        batch_first; C-contiguous, laid out as y): 0 with probability ``dropout``, else
        ``1 / (1 - dropout)``."""
        F, p = self._D * self._R, self.dropout
        u = _core.uniform(seed, 8 * (2 * k) + 3, T * B * F).reshape(T, B, F)  # idx (t*B+b)*F+j
        mask = np.where(u >= p, 1.0 / (1.0 - p) if p < 1 else 0.0, 0.0).astype(self.dtype)
        return np.ascontiguousarray(mask.swapaxes(0, 1)) if self.batch_first else mask

    def __call__(self, x: ArrayLike, hx: tuple[ArrayLike, ArrayLike] | None = None,
                 lengths: ArrayLike | None = None) -> tuple[Array, State]:
        """Inference forward: returns ``(y, (h_n, c_n))``. Dropout and recurrent dropout are
        off; zoneout uses its expectation."""
        y, state, _ = self._run(x, hx, lengths, None, training=False)
        return y, state

    forward = __call__

    def freeze(self, weight_dtype: type | np.dtype[Any] | str | None = None) -> FrozenLSTM:
        """A snapshot of this layer for inference only, with its weights packed once for the
        kernels (as ONNX Runtime packs them when it creates a session); plain calls pack them
        in every call. Later changes to this layer's parameters do not reach the snapshot:
        freeze again after them. Costs the parameters' memory once more.

        ``weight_dtype=np.float16`` (float32 layers) rounds the snapshot's weight matrices
        (``weight_ih``, ``weight_hh``, ``weight_hr``; not biases, peepholes or layer-norm
        parameters) to the nearest float16 and computes in float32 with them: every result
        is bitwise that of this layer with its weights so rounded. :meth:`FrozenLSTM.step`
        then reads them as float16, half the bytes (the faster step at B = 1; see
        ``docs/variants.md``). ``weight_dtype=np.int8`` (float32 layers; one direction, no
        layer norm) quantizes instead: :meth:`FrozenLSTM.step` computes ``x W_ih^T`` and
        ``h W_hh^T`` from int8 weights (each row with its own scale) and ``x`` and ``h``
        quantized likewise at every step, the fastest step (dynamic quantization, as
        ``torch.ao.nn.quantized.dynamic.LSTM``; results within about 1% of float32, see
        ``docs/variants.md``). ``None`` keeps the layer's dtype."""
        return FrozenLSTM(self, weight_dtype)

    def forward_train(self, x: ArrayLike, hx: tuple[ArrayLike, ArrayLike] | None = None,
                      lengths: ArrayLike | None = None, seed: int | None = None
                      ) -> tuple[Array, State, LayerTape]:
        """Training forward: returns ``(y, (h_n, c_n), tape)`` for :meth:`backward`.

        The random masks (dropout, zoneout, recurrent dropout) come from ``seed`` (an int in
        ``[0, 2**64)``), with stream ``8 * (2k + d)`` for pass (k, d) and ``16k + 3`` for the
        dropout after layer k; ``None`` draws one from the layer's own generator (seeded by the
        constructor's ``seed``).
        """
        y, state, tape = self._run(x, hx, lengths, seed, training=True)
        assert tape is not None
        return y, state, tape

    def backward(self, tape: LayerTape, dy: ArrayLike | None, dh_n: ArrayLike | None = None,
                 dc_n: ArrayLike | None = None) -> tuple[Array, State, dict[str, Array]]:
        """Backward of :meth:`forward_train`.

        ``dy`` has ``y``'s shape; ``dh_n``, ``dc_n`` that of ``h_n``, ``c_n`` (each may be
        ``None``: no gradient). Returns ``(dx, (dh0, dc0), grads)`` where ``grads`` maps each
        parameter name to its gradient, in :meth:`named_parameters`' order.
        """
        if not isinstance(tape, (LayerTape, Tape)):
            raise TypeError(f"tape: expected the tape of this layer's forward_train, got "
                            f"{type(tape).__name__}")
        if not isinstance(tape, LayerTape) or tape._layer is not self:
            raise ValueError("tape: it was not made by this layer's forward_train")
        D, L, H, R = self._D, self.num_layers, self.hidden_size, self._R
        T, B, unbatched = tape._T, tape._B, tape._unbatched
        if dy is not None:
            dya = _float_array("dy", dy, self.dtype, "the layer")
            y_shape = (B, T, D * R) if self.batch_first else (T, B, D * R)
            want = (T, D * R) if unbatched else y_shape
            if dya.shape != want:
                raise ValueError(f"dy: expected the shape of y, {want}, got {dya.shape}")
            dy = dya.reshape(y_shape)
        dh, dc = (self._state(n, s, B, unbatched) for n, s in (("dh_n", dh_n), ("dc_n", dc_n)))
        dh0, dc0 = np.empty((L * D, B, R), self.dtype), np.empty((L * D, B, H), self.dtype)
        grads: dict[str, Array] = {}
        dx = np.empty(0, self.dtype)
        for k in reversed(range(L)):
            for d in range(D):
                j = k * D + d
                dyd = None if dy is None else dy[..., d * R:(d + 1) * R]
                # both directions read the same input: the second adds its dx to the first's
                g = _backward(tape._tapes[j], dyd, None if dh is None else dh[j],
                              None if dc is None else dc[j], dx_add=dx if d else None)
                dx = g.dx
                dh0[j], dc0[j] = g.dh0, g.dc0
                grads.update(self._pass_grads(k, d, g))
            # the gradient of layer k - 1's output (its passes apply the dropout mask to it)
            dy = dx
        if unbatched:
            dx, dh0, dc0 = dx.reshape(T, self.input_size), dh0[:, 0], dc0[:, 0]
        return dx, (dh0, dc0), {name: grads[name] for name in self._shapes}

    def _pass_grads(self, k: int, d: int, g: LSTMGrads) -> dict[str, Array]:
        """Pass (k, d)'s gradients, by parameter name."""
        sfx = "_" + self._pass_name(k, d)
        out = {"weight_ih" + sfx: g.dw_ih, "weight_hh" + sfx: g.dw_hh,
               "bias_ih" + sfx: g.db_ih, "bias_hh" + sfx: g.db_hh,
               "weight_hr" + sfx: g.dw_hr, "peephole" + sfx: g.dpeephole}
        if g.dlayer_norm is not None:
            out.update({n + sfx: a for n, a in zip(_LN, g.dlayer_norm)})
        return {n: a for n, a in out.items() if n in self._shapes and a is not None}

    # ---- streaming: one step at a time ----
    def initial_state(self, batch: int) -> StreamState:
        """The zero state of :meth:`step` for ``batch`` sequences: ``h [L, B, R]``,
        ``c [L, B, H]`` in the layer's dtype."""
        B, L = _size("batch", batch, 0), self.num_layers
        return StreamState(np.zeros((L, B, self._R), self.dtype),
                           np.zeros((L, B, self.hidden_size), self.dtype))

    def step(self, x: ArrayLike, state: StreamState | tuple[ArrayLike, ArrayLike] | None = None
             ) -> tuple[Array, StreamState]:
        """One time step of online inference: ``x [B, I]`` and the state from
        :meth:`initial_state` or the previous step (``None``: zeros) give
        ``(y [B, R], new_state)``.

        Stepping ``x[0], x[1], ...`` gives the rows of ``lstm(x)``'s ``y`` and, at the end, its
        ``(h_n, c_n)``: inference semantics (no dropout, zoneout at its expectation). Not with
        ``bidirectional`` or ``reverse``, which need the future. The parameters are read at
        every call: in-place updates (``load_state_dict``) and replaced arrays both count. On
        fixed weights, ``self.freeze().step`` is faster (:meth:`FrozenLSTM.step`).
        """
        plan = self.__dict__.get("_step_args")
        if plan is not None and plan.core is not None:  # checks in C++, None if it needs ours
            out = plan.core(x, state, self.__dict__)
            if out is not None:
                return out  # type: ignore[no-any-return]
        return self._step_with(self._step_plan(), x, state)

    def _step_with(self, plan: _StepPlan, x: ArrayLike,
                   state: StreamState | tuple[ArrayLike, ArrayLike] | None
                   ) -> tuple[Array, StreamState]:
        """:meth:`step` with the given plan (this layer's, or a frozen copy's)."""
        if not (type(x) is np.ndarray and x.dtype == self.dtype and x.ndim == 2
                and x.shape[1] == self.input_size and x.flags.c_contiguous
                and x.flags.aligned):  # else the full checks
            x = self._step_input(x)
        h, c = self._step_state(state, x.shape[0])
        if not self.layer_norm:  # one call through every layer: lstmx.h, lstm_step
            y, hn, cn = plan.core.run(x, h, c)
            return y, StreamState(hn, cn)
        inp = x[None]  # [1, B, I_k]; layer norm: a sequence of one step per layer
        hs, cs = [], []
        for k, sp in enumerate(plan.passes):
            w_ih, w_hh, b_ih, b_hh = sp.layer[:4]
            bias = None
            if b_ih is not None and b_hh is not None:
                with np.errstate(all="ignore"):  # as lstm(): inf + -inf is NaN, silently
                    bias = b_ih + b_hh
            # dots: the weights read as they are, not packed for one step (unless frozen)
            inp, hn, cn, _ = _core.forward(inp, w_ih, w_hh, bias, h[k], c[k], False, False,
                                           dots=True, **sp.kw)
            hs.append(hn)
            cs.append(cn)
        return inp[0], StreamState(np.stack(hs), np.stack(cs))

    def _step_input(self, x: ArrayLike) -> AnyArray:
        """:meth:`step`'s ``x [B, I]``, checked, C-contiguous."""
        xa = _float_array("x", x, self.dtype, "the layer")
        if xa.ndim != 2 or xa.shape[1] != self.input_size:
            raise ValueError(f"x: expected one step [B, I] with I = {self.input_size}, got "
                             f"shape {xa.shape}")
        B, L = xa.shape[0], self.num_layers
        _check_memory("x", B * (xa.shape[1] + 3 * L * (self._R + self.hidden_size))
                      * self.dtype.itemsize, f"a step of B = {B} sequences")
        return _c_array(xa)

    def _step_state(self, state: StreamState | tuple[ArrayLike, ArrayLike] | None, B: int
                    ) -> tuple[AnyArray, AnyArray]:
        """:meth:`step`'s state as C-contiguous ``h [L, B, R]``, ``c [L, B, H]``."""
        if state is None:
            return self.initial_state(B)
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError(f"state: expected a tuple (h, c) as from initial_state(), got "
                            f"{type(state).__name__}")
        h, c = state
        L, dt = self.num_layers, self.dtype
        for a, n in ((h, self._R), (c, self.hidden_size)):
            if not (type(a) is np.ndarray and a.dtype == dt and a.shape == (L, B, n)
                    and a.flags.c_contiguous and a.flags.aligned):
                break
        else:
            return h, c  # the fast path: as returned by step() or initial_state()
        hs, cs = self._state("state.h", h, B, False), self._state("state.c", c, B, False)
        if hs is None or cs is None:
            raise TypeError("state: expected arrays (h, c), got None in the tuple")
        return _c_array(hs), _c_array(cs)

    _STEP_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "peephole") + _LN

    def _step_plan(self) -> _StepPlan:
        """:meth:`step`'s arguments, cached while the parameter arrays are the same objects;
        rebuilt, through every check of :func:`lstmx.lstm`, when one of them was replaced."""
        attrs = self.__dict__
        plan: _StepPlan | None = attrs.get("_step_args")
        if plan is not None and all(map(operator.is_, map(attrs.get, plan.names), plan.params)):
            return plan
        if self.bidirectional or self.reverse:
            what = "bidirectional" if self.bidirectional else "reverse"
            raise ValueError(f"step: not with {what}=True (a step cannot see the future); run "
                             f"the whole sequence with lstm(x)")
        names = tuple(n + "_" + self._pass_name(k, 0) for k in range(self.num_layers)
                      for n in self._STEP_NAMES)
        params = tuple(attrs.get(n) for n in names)
        passes = [self._step_pass(k) for k in range(self.num_layers)]
        layers = [sp.layer for sp in passes]
        options = (self.clip or 0.0, self.input_forget, self.zoneout_h, self.zoneout_c)
        core = None if self.layer_norm else _core.step_plan(layers, *options, StreamState,
                                                            names, params)
        plan = _StepPlan(names, params, passes, options, core)
        # kept only if the kernels read the parameters themselves (no converted copies)
        if all(v is None or (type(v) is np.ndarray and v.flags.c_contiguous and v.flags.aligned)
               for v in params):
            attrs["_step_args"] = plan
        return plan

    def _step_pass(self, k: int) -> _StepPass:
        """Layer ``k``'s arguments of ``_core.step_plan`` (and ``_core.forward``), through every
        check of :func:`lstmx.lstm`."""
        p = self._pass_params(k, 0)
        x = np.zeros((1, 1, self.input_size if k == 0 else self._R), self.dtype)
        a = _check_args(x, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], None,
                        None, False, False, w_hr=p["weight_hr"])
        kw = _variant(a, False, peephole=p["peephole"], clip=self.clip,
                      input_forget=self.input_forget, zoneout_h=self.zoneout_h,
                      zoneout_c=self.zoneout_c, layer_norm=p["layer_norm"])
        if a.w_hr is not None:
            kw["w_hr"] = a.w_hr
        # the binding's defaults (False, 0) left out: each keyword costs ~0.5 us per call
        kw = {n: v for n, v in kw.items() if not (isinstance(v, (bool, int, float)) and not v)}
        b_ih, b_hh = (None if b is None else _c_array(np.asarray(b))
                      for b in (p["bias_ih"], p["bias_hh"]))
        return _StepPass((a.w_ih, a.w_hh, b_ih, b_hh, kw.get("w_hr"), kw.get("peephole")), kw)

    # ---- saving ----
    def _config(self) -> dict[str, Any]:
        """The constructor's arguments but ``seed``, as JSON values."""
        cfg = {n: getattr(self, n) for n in inspect.signature(LSTM).parameters
               if n not in ("seed", "dtype")}
        return {**cfg, "dtype": str(self.dtype)}

    def save(self, path: str | os.PathLike[str] | Any) -> None:
        """Write the layer to an ``.npz`` file (NumPy appends ``.npz`` to a name without it;
        ``path`` may also be a binary file object). Read it back with :func:`lstmx.load`.

        Layout (one array per key, no pickles): ``lstmx_format``, an int64 scalar,
        :data:`FORMAT_VERSION`; ``lstmx_config``, a string scalar: the constructor's arguments
        but ``seed`` as a JSON object (``dtype`` as ``"float32"`` or ``"float64"``); and every
        parameter under its PyTorch name (:meth:`named_parameters`), in the layer's dtype.
        The generator of training-mask seeds is not saved.
        """
        arrays: dict[str, Any] = {_FORMAT_KEY: np.int64(FORMAT_VERSION),
                                  _CONFIG_KEY: np.str_(json.dumps(self._config())),
                                  **self.named_parameters()}
        np.savez(path, **arrays)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle support: everything but :meth:`step`'s cache (rebuilt on use)."""
        return {k: v for k, v in self.__dict__.items() if k != "_step_args"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        """The constructor call, with the arguments that are not the default."""
        args = inspect.signature(LSTM).parameters
        extra = "".join(f", {n}={getattr(self, n)!r}" for n, a in args.items()
                        if n not in ("input_size", "hidden_size", "dtype", "seed")
                        and getattr(self, n) != a.default)
        extra += ", dtype=float64" if self.dtype == np.float64 else ""
        return f"LSTM({self.input_size}, {self.hidden_size}{extra})"


class FrozenLSTM:
    """An :class:`LSTM`'s inference on fixed weights (made by :meth:`LSTM.freeze`): the same
    ``(y, (h_n, c_n)) = frozen(x, hx=None, lengths=None)`` as the layer's, bitwise, without
    packing the weights in every call or checking them again, and the streaming
    :meth:`step` on the packed weights (the faster one at B = 1). A snapshot: it holds its own
    copy of the layer (``layer``), its weight matrices rounded to float16 with
    ``weight_dtype=np.float16`` (then the results are bitwise those of that rounded layer).
    With ``weight_dtype=np.int8`` every step is quantized (:meth:`LSTM.freeze`), and a call on
    a sequence runs step by step: the results follow
    ``lstmx.reference.lstm_stack_forward(..., int8=True)`` (the same pre-activations, bitwise,
    from the same inputs) and differ from the layer's by about 1%.
    Pickles (packing again on load). The packing belongs to the kernels active when it was
    made: if they change (``_core.set_isa``), calls raise ``ValueError`` until the layer is
    frozen again."""

    def __init__(self, layer: LSTM,
                 weight_dtype: type | np.dtype[Any] | str | None = None) -> None:
        if not isinstance(layer, LSTM):
            raise TypeError(f"layer: expected an lstmx.LSTM, got {type(layer).__name__}")
        try:
            wd = layer.dtype if weight_dtype is None else np.dtype(weight_dtype)
        except TypeError as e:
            raise TypeError(f"weight_dtype: {e}") from None
        if wd != layer.dtype and not (wd in (np.float16, np.int8) and layer.dtype == np.float32):
            raise ValueError(f"weight_dtype: expected None, {layer.dtype} or (float32 layers) "
                             f"float16 or int8, got {wd}")
        int8 = wd == np.int8
        if int8 and (layer.bidirectional or layer.reverse or layer.layer_norm):
            what = ("bidirectional" if layer.bidirectional else "reverse" if layer.reverse
                    else "layer_norm")
            raise ValueError(f"weight_dtype: int8 is for the streaming step, not with "
                             f"{what}=True")
        self.weight_dtype: np.dtype[Any] = wd
        self.layer = copy.deepcopy(layer)
        lay, D, R = self.layer, self.layer._D, self.layer._R
        half = wd == np.float16
        for name, w in lay.named_parameters().items():
            if half and name.startswith("weight_"):
                with np.errstate(over="ignore"):
                    w16 = w.astype(np.float16)
                if np.any(np.isinf(w16) & np.isfinite(w)):
                    raise ValueError(f"weight_dtype: {name} has values beyond float16's range "
                                     f"(|w| <= 65504): max |w| = {np.abs(w).max()}")
                w[...] = w16  # the snapshot's own copy, in place
            if int8 and name.startswith("weight_") and not np.isfinite(w).all():
                raise ValueError(f"weight_dtype: int8 needs finite weights; {name} has "
                                 f"{int(np.count_nonzero(~np.isfinite(w)))} values that are not")
        # float16 panels for step() only: one pass a layer, no layer norm
        half_panels = half and D == 1 and not lay.layer_norm
        self._passes: list[_FrozenPass] = []
        self._step_args: _StepPlan | None = None  # step()'s, made on first use
        for k in range(lay.num_layers):
            for d in range(D):
                p = lay._pass_params(k, d)
                x = np.zeros((1, 1, lay.input_size if k == 0 else D * R), lay.dtype)
                a = _check_args(x, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"],
                                None, None, False, False, w_hr=p["weight_hr"])
                kw = _variant(a, False, peephole=p["peephole"], clip=lay.clip,
                              input_forget=lay.input_forget, zoneout_h=lay.zoneout_h,
                              zoneout_c=lay.zoneout_c, layer_norm=p["layer_norm"])
                if a.w_hr is not None:
                    kw["w_hr"] = a.w_hr
                kw["packed"] = _core.pack(a.w_ih, a.w_hh, a.w_hr, half=half_panels,
                                          int8=int8)
                # the binding's defaults (False, 0) left out: each keyword costs ~0.5 us a call
                kw = {n: v for n, v in kw.items()
                      if not (isinstance(v, (bool, int, float)) and not v)}
                self._passes.append(_FrozenPass((a.w_ih, a.w_hh, a.bias), kw))

    def __call__(self, x: ArrayLike, hx: tuple[ArrayLike, ArrayLike] | None = None,
                 lengths: ArrayLike | None = None) -> tuple[Array, State]:
        """Inference forward, as :meth:`LSTM.__call__`: returns ``(y, (h_n, c_n))``."""
        if self.weight_dtype == np.int8:
            return self._steps(x, hx, lengths)
        y, state, _ = self.layer._run(x, hx, lengths, None, False, self._passes)
        return y, state

    def _steps(self, x: ArrayLike, hx: tuple[ArrayLike, ArrayLike] | None,
               lengths: ArrayLike | None) -> tuple[Array, State]:
        """:meth:`__call__` as one :meth:`step` a time step (int8: the kernels' int8 panels
        serve the step only); a sequence that has ended keeps its state, and its ``y`` is 0."""
        lay = self.layer
        xa, h0, c0, lens, unbatched = lay._prepare(x, hx, lengths)
        if lay.batch_first:
            xa = xa.swapaxes(0, 1)
        T, B = xa.shape[:2]
        _check_memory("x", T * B * lay._R * lay.dtype.itemsize, f"y of T*B = {T * B} rows")
        y = np.zeros((T, B, lay._R), lay.dtype)
        state = lay.initial_state(B) if h0 is None or c0 is None else StreamState(
            _c_array(h0), _c_array(c0))
        first_end = T if lens is None or B == 0 else int(lens.min())
        for t in range(T):
            yt, new = self.step(_c_array(xa[t]), state)
            if lens is not None and t >= first_end:  # ended: they keep their state, y = 0
                run = lens > t
                yt = np.where(run[:, None], yt, 0)
                new = StreamState(np.where(run[:, None], new.h, state.h),
                                  np.where(run[:, None], new.c, state.c))
            y[t], state = yt, new
        if lay.batch_first:
            y = np.ascontiguousarray(y.swapaxes(0, 1))
        if unbatched:
            return (y[0] if lay.batch_first else y[:, 0]), (state.h[:, 0], state.c[:, 0])
        return y, (state.h, state.c)

    forward = __call__

    def initial_state(self, batch: int) -> StreamState:
        """The zero state of :meth:`step`, as :meth:`LSTM.initial_state`."""
        return self.layer.initial_state(batch)

    def step(self, x: ArrayLike, state: StreamState | tuple[ArrayLike, ArrayLike] | None = None
             ) -> tuple[Array, StreamState]:
        """One time step of online inference, as :meth:`LSTM.step` (equal up to rounding), on
        the packed weights: each thread reads its share of them as one sequential stream."""
        plan = self._step_args
        if plan is not None and plan.core is not None:  # checks in C++, None if it needs ours
            out = plan.core(x, state, None)
            if out is not None:
                return out  # type: ignore[no-any-return]
        if plan is None:  # the layer's plan (its checks), with the packed weights added
            base = self.layer._step_plan()
            packs = [fp.kw["packed"] for fp in self._passes]  # one pass a layer: no bidirectional
            passes = [_StepPass(sp.layer + (pk,), {**sp.kw, "packed": pk})
                      for sp, pk in zip(base.passes, packs)]
            core = None if base.core is None else _core.step_plan(
                [sp.layer for sp in passes], *base.options, StreamState)
            plan = base._replace(passes=passes, core=core)
            self._step_args = plan
        return self.layer._step_with(plan, x, state)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weights."""
        return sum(int(fp.kw["packed"].nbytes) for fp in self._passes)

    def __reduce__(self) -> tuple[Any, tuple[LSTM, str]]:
        """Pickle support: the layer; the weights are packed again on load."""
        return FrozenLSTM, (self.layer, self.weight_dtype.name)

    def __repr__(self) -> str:
        wd = "" if self.weight_dtype == self.layer.dtype else f", weight_dtype='{self.weight_dtype}'"
        return f"FrozenLSTM({self.layer!r}{wd})"


def load(path: str | os.PathLike[str] | Any) -> LSTM:
    """Read a layer written by :meth:`LSTM.save` (a path or a binary file object).

    Raises ``ValueError`` for a file of another format version, a bad configuration, and
    missing, unexpected or misshapen parameters."""
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"path: cannot read {path!r} as an lstmx .npz file: {e}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"path: {path!r} is a single .npy array, not an lstmx .npz file")
    with f:
        try:
            version = f[_FORMAT_KEY] if _FORMAT_KEY in f.files else None
            if version is None or version.shape != () or version.dtype.kind not in "iu":
                raise ValueError(f"path: {path!r} has no {_FORMAT_KEY} version number: not "
                                 f"written by LSTM.save")
            if int(version) != FORMAT_VERSION:
                raise ValueError(f"path: {path!r} has format version {int(version)}; this "
                                 f"lstmx reads version {FORMAT_VERSION}")
            if _CONFIG_KEY not in f.files:
                raise ValueError(f"path: {path!r} has no {_CONFIG_KEY}")
            config = json.loads(str(f[_CONFIG_KEY][()]))
            if not isinstance(config, dict):
                raise ValueError("expected a JSON object")
            layer = LSTM(**config)
        except (TypeError, ValueError) as e:
            if str(e).startswith("path:"):
                raise
            raise ValueError(f"path: bad {_CONFIG_KEY} in {path!r}: {e}") from None
        params = {k: f[k] for k in f.files if k not in (_FORMAT_KEY, _CONFIG_KEY)}
    try:
        layer.load_state_dict(params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"path: the parameters in {path!r} do not fit {layer!r}: {e}") from None
    return layer
