"""The functional LSTM API: plain NumPy arrays in, plain NumPy arrays out.

Shapes (T steps, B batch, I input features, H hidden units; gate order i, f, g, o):

============  ===========================================
``x``         ``[T, B, I]`` (``[B, T, I]`` if ``batch_first``)
``w_ih``      ``[4H, I]``
``w_hh``      ``[4H, H]``
``b_ih``      ``[4H]`` or ``None``
``b_hh``      ``[4H]`` or ``None``
``h0, c0``    ``[B, H]`` or ``None`` (zeros)
``y``         ``[T, B, H]`` (``[B, T, H]`` if ``batch_first``)
``h_n, c_n``  ``[B, H]``
============  ===========================================

Variants (keyword arguments of :func:`lstm` and :func:`lstm_train`; see ``cpp/lstmx.h``):

=====================  ==========================================================================
``w_hr``               ``[P, H]`` projection (PyTorch's ``proj_size``): ``h = (o * tanh(c)) w_hr^T``;
                       ``w_hh`` is then ``[4H, P]``, and ``h0``, ``h_n``, ``y`` have ``P`` units
``lengths``            ``[B]`` ints in ``[0, T]``, any order: sequence ``b`` runs ``lengths[b]``
                       steps; ``y`` is 0 past its end, ``h_n``/``c_n`` are its state at its end.
                       Padding costs nothing: the active batch shrinks as sequences end.
``reverse``            run each sequence from its own last step back to its first
``peephole``           ``[3, H]``: ``p_i, p_f`` (see ``c_{t-1}``) and ``p_o`` (sees ``c_t``), as ONNX
``clip``               clamp the gate pre-activations to ``[-clip, clip]`` (ONNX ``clip``)
``input_forget``       couple the gates: ``f = 1 - i`` (ONNX ``input_forget``)
``zoneout_h, _c``      zoneout probabilities (Krueger et al. 2016): random masks in
                       :func:`lstm_train`, their expectation in :func:`lstm`
``recurrent_dropout``  (:func:`lstm_train`) drop units of ``h_{t-1}`` before ``w_hh``, one mask
                       per call (Keras ``recurrent_dropout``), kept units scaled by ``1/(1-p)``
``layer_norm``         ``(gain_x [4H], gain_h [4H], gain_c [H], bias_c [H])``: layer-normalised LSTM
                       (Haste's ``LayerNormLSTM``): ``z = LN(x w_ih^T) gain_x + LN(h w_hh^T) gain_h
                       + b`` (LN over the 4H values of a token, eps 1e-5, no bias inside) and
                       ``h = o * tanh(LN(c) gain_c + bias_c)`` (LN over H)
``seed, stream``       (:func:`lstm_train`) the masks: a counter-based hash of (seed, stream,
                       step, batch index, unit), the same in :func:`lstmx.reference.uniform`
=====================  ==========================================================================

Every argument is checked here, at the boundary: a bad one raises ``TypeError`` or
``ValueError`` naming it, with the expected and the actual shape. float32 and float64 are
supported; all arrays must share ``x``'s dtype. Non-contiguous inputs are copied.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from . import _core

__all__ = [
    "LSTMGrads",
    "Tape",
    "lstm",
    "lstm_train",
    "lstm_backward",
    "lstm_cell",
    "lstm_cell_train",
    "lstm_cell_backward",
]

Array = npt.NDArray[np.floating[Any]]
AnyArray = npt.NDArray[Any]  # of any dtype
ArrayLike = Any  # numpy arrays, torch CPU tensors, nested lists of floats


class LSTMGrads(NamedTuple):
    """Gradients from :func:`lstm_backward` or :func:`lstm_cell_backward`.

    ``dx`` has the shape of ``x``; ``dh0``/``dc0`` that of the initial state (for a cell step:
    of ``h``/``c``); ``dw_*`` that of the weights. ``db_ih`` and ``db_hh`` are equal (both biases
    enter the gates the same way) and are ``None`` when the forward pass had no bias;
    ``dpeephole`` is ``None`` without peepholes, ``dw_hr`` without a projection, ``dlayer_norm``
    (the gradients of ``layer_norm``'s four arrays) without layer norm.
    """

    dx: Array
    dh0: Array
    dc0: Array
    dw_ih: Array
    dw_hh: Array
    db_ih: Array | None
    db_hh: Array | None
    dpeephole: Array | None = None
    dw_hr: Array | None = None
    dlayer_norm: tuple[Array, Array, Array, Array] | None = None


class Tape:
    """Opaque record of a training forward pass; pass it to the matching backward.

    It owns the C++ workspace (a copy of the inputs and weights, the activated gates and the
    cell states), so later changes to the caller's arrays do not affect backward. A tape can be
    used for any number of backward calls.
    """

    __slots__ = ("_cache", "_has_bias", "_cell", "_dtype")

    def __init__(self, cache: Any, has_bias: bool, cell: bool, dtype: np.dtype[Any]) -> None:
        kinds = {np.dtype(np.float32): _core.Cache_f32, np.dtype(np.float64): _core.Cache_f64}
        kind = kinds.get(dtype) if isinstance(dtype, np.dtype) else None
        if kind is None or not isinstance(cache, kind):
            raise TypeError(f"cache, dtype: expected the workspace of a training forward pass "
                            f"and its dtype (tapes are made by lstmx), got "
                            f"{type(cache).__name__} and {dtype!r}")
        self._cache = cache
        self._has_bias = has_bias
        self._cell = cell
        self._dtype = dtype

    @property
    def nbytes(self) -> int:
        """Bytes held by the workspace."""
        return int(self._cache.nbytes)

    def __repr__(self) -> str:
        c = self._cache
        kind = "cell" if self._cell else "sequence"
        return (f"<lstmx.Tape {kind} T={c.T} B={c.B} I={c.I} H={c.H} "
                f"dtype={self._dtype} nbytes={c.nbytes}>")


# ---- boundary checks -------------------------------------------------------------------------

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _to_numpy(name: str, a: ArrayLike) -> AnyArray:
    """Any array-like (numpy, torch CPU tensor, list) to an ndarray, without casting."""
    if a is None:
        raise TypeError(f"{name}: expected an array, got None")
    try:
        if hasattr(a, "detach") and hasattr(a, "cpu") and hasattr(a, "numpy"):  # torch.Tensor
            a = a.detach().cpu().numpy()
        return np.asarray(a)
    except (TypeError, ValueError, RuntimeError) as e:  # ragged lists, bfloat16 or sparse tensors
        raise TypeError(f"{name}: cannot be read as an array ({type(a).__name__}): {e}") from None


def _float_array(name: str, a: ArrayLike, dtype: np.dtype[Any] | None = None,
                 source: str = "x") -> AnyArray:
    """``a`` as a float32 or float64 ndarray of ``dtype`` (the call's, set by ``source``).

    Arrays and tensors keep their dtype, which must match; Python lists and numbers have none
    and take ``dtype``."""
    arr = _to_numpy(name, a)
    if dtype is not None and not hasattr(a, "dtype") and arr.dtype.kind in "iuf":
        arr = arr.astype(dtype)
    _check_dtype(name, arr.dtype, dtype, source)
    return arr


def _check_dtype(name: str, got: np.dtype[Any], dtype: np.dtype[Any] | None, source: str = "x",
                 module: str = "np") -> None:
    """``got`` must be float32 or float64, and ``dtype`` (the call's, set by ``source``)."""
    if got not in _FLOATS:
        raise TypeError(f"{name}: expected float32 or float64 data, got dtype {got}")
    if dtype is not None and got != dtype:
        raise TypeError(f"{name}: dtype {got} does not match {source}'s dtype {dtype}; "
                        f"cast it with .astype({module}.{dtype})")


def _call_dtype(*named: tuple[str, ArrayLike]) -> tuple[np.dtype[Any], str]:
    """The dtype of a call: that of its first argument that has one (an array or a tensor;
    lists have none, and take it), and that argument's name."""
    for name, a in named:
        if hasattr(a, "dtype"):
            return _float_array(name, a).dtype, name
    return np.dtype(np.float64), named[0][0]


def _c_array(a: AnyArray) -> AnyArray:
    """C-contiguous and aligned (the kernels' layout), copying only if needed."""
    return a if a.flags.c_contiguous and a.flags.aligned else np.array(a, order="C")


def _flag(name: str, v: object) -> bool:
    """A bool argument: True, False, numpy bools, or the ints 0 and 1."""
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
        return bool(v)
    raise TypeError(f"{name}: expected a bool, got {type(v).__name__}")


def _expect_shape(name: str, arr: Any, expected: tuple[int, ...], desc: str) -> None:
    """``arr.shape`` (of any array type) must be ``expected``."""
    if arr.shape != expected:
        raise ValueError(f"{name}: expected shape {desc} = {expected}, got {arr.shape}")


@functools.cache
def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 62


def _check_memory(names: str, nbytes: int, what: str | Callable[[], str]) -> None:
    """Refuse an allocation the machine cannot hold, before it is attempted (``what`` may be
    a function, called only then)."""
    total = _physical_memory()
    if nbytes > min(total, 1 << 62):
        what = what if isinstance(what, str) else what()
        raise MemoryError(f"{names}: {what} would need {nbytes / 2**30:.4g} GiB; this machine "
                          f"has {total / 2**30:.1f} GiB")


class _Args(NamedTuple):
    x: AnyArray
    w_ih: AnyArray
    w_hh: AnyArray
    bias: AnyArray | None
    h0: AnyArray | None
    c0: AnyArray | None
    has_bias: bool
    batch_first: bool = False
    w_hr: AnyArray | None = None


def _check_weights(wih: AnyArray, whh: AnyArray, I: int) -> int:
    """Shape checks of ``w_hh [4H, H]`` and ``w_ih [4H, I]``; returns H."""
    if whh.ndim != 2 or whh.shape[0] != 4 * whh.shape[1]:
        raise ValueError(f"w_hh: expected shape [4H, H], got {whh.shape}")
    H = int(whh.shape[1])
    _expect_shape("w_ih", wih, (4 * H, I), "[4H, I]")
    return H


def _check_projected(wih: AnyArray, whh: AnyArray, whr: AnyArray, I: int) -> tuple[int, int]:
    """Shape checks with a projection: ``w_hr [P, H]``, ``w_hh [4H, P]``, ``w_ih [4H, I]``;
    returns (H, P)."""
    if whr.ndim != 2 or not 0 < whr.shape[0] < whr.shape[1]:
        raise ValueError(f"w_hr: expected shape [P, H] with 0 < P < H, got {whr.shape}")
    P, H = whr.shape
    _expect_shape("w_hh", whh, (4 * H, P), "[4H, P]")
    _expect_shape("w_ih", wih, (4 * H, I), "[4H, I]")
    return H, P


def _check_args(x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike, b_ih: ArrayLike | None,
                b_hh: ArrayLike | None, h0: ArrayLike | None, c0: ArrayLike | None,
                batch_first: bool, training: bool, cell: bool = False,
                w_hr: ArrayLike | None = None) -> _Args:
    """Every check of a forward call, then C-contiguous copies where needed. The call's dtype
    is x's (the weights' if x is a list). ``cell``: x is one step ``[B, I]``, the state ``h, c``.
    With ``w_hr [P, H]`` (a projection) ``w_hh`` is ``[4H, P]`` and ``h0`` is ``[B, P]``.
    """
    dt, src = _call_dtype(("x", x), ("w_hh", w_hh), ("w_ih", w_ih))
    xa = _float_array("x", x, dt, src)
    batch_first = _flag("batch_first", batch_first)
    if xa.ndim != (2 if cell else 3):
        d = "[B, I]" if cell else "[B, T, I]" if batch_first else "[T, B, I]"
        raise ValueError(f"x: expected a {2 if cell else 3}-D array {d}, got a {xa.ndim}-D "
                         f"array of shape {xa.shape}")
    if cell:
        xa = xa[None]
    T, B = (xa.shape[1], xa.shape[0]) if batch_first else (xa.shape[0], xa.shape[1])
    I = xa.shape[2]
    whh = _float_array("w_hh", w_hh, dt, src)
    wih = _float_array("w_ih", w_ih, dt, src)
    whr = None if w_hr is None else _float_array("w_hr", w_hr, dt, src)
    if whr is None:
        H = R = _check_weights(wih, whh, I)
    else:
        H, R = _check_projected(wih, whh, whr, I)
    opt: dict[str, AnyArray | None] = {}
    hn, cn = ("h", "c") if cell else ("h0", "c0")
    for nm, a, shape, desc in (("b_ih", b_ih, (4 * H,), "[4H]"), ("b_hh", b_hh, (4 * H,), "[4H]"),
                               (hn, h0, (B, R), "[B, H]" if whr is None else "[B, P]"),
                               (cn, c0, (B, H), "[B, H]")):
        opt[nm] = arr = None if a is None else _float_array(nm, a, dt, src)
        if arr is not None:
            _expect_shape(nm, arr, shape, desc)
    # Before any copy: per row of x, its copy, y and the input projection, and in training the
    # cache (x, gates, h, c) and backward's scratch; the weights, copied, and the cache's copy.
    rows, k = T * B, 2 if training else 1
    nbytes = (rows * (I + 5 * H + (I + 10 * H if training else 0)) + k * 4 * H * (I + H + 1)
              + 4 * B * H) * dt.itemsize
    _check_memory("x, w_ih, w_hh", nbytes, f"an LSTM with T*B = {rows} rows, I = {I}, H = {H}")
    bias = [b for b in (opt["b_ih"], opt["b_hh"]) if b is not None]
    if len(bias) == 2:
        with np.errstate(all="ignore"):  # inf + -inf is NaN, silently: NaN propagates
            bias = [bias[0] + bias[1]]
    ha, ca = opt[hn], opt[cn]
    return _Args(_c_array(xa), _c_array(wih), _c_array(whh), _c_array(bias[0]) if bias else None,
                 None if ha is None else _c_array(ha),
                 None if ca is None else _c_array(ca), bool(bias), batch_first,
                 None if whr is None else _c_array(whr))


def _check_tape(tape: Any, cell: bool) -> Tape:
    if not isinstance(tape, Tape):
        raise TypeError(f"tape: expected an lstmx.Tape, got {type(tape).__name__}")
    if tape._cell != cell:
        src, dst = ("lstm_cell_train", "lstm_cell_backward") if tape._cell else ("lstm_train",
                                                                                  "lstm_backward")
        raise ValueError(f"tape: this tape comes from {src}; pass it to {dst}")
    return tape


def _grad_array(name: str, a: ArrayLike | None, expected: tuple[int, ...], desc: str,
                dtype: np.dtype[Any], row_stride: int = 0) -> AnyArray | None:
    """``a`` checked, as the kernels read it: C-contiguous, or ``[n0, n1, R]`` with its rows
    ``row_stride`` elements apart (a pass's ``dy`` in a bidirectional layer), copying only if
    it is not so already."""
    if a is None:
        return None
    arr = _float_array(name, a, dtype)
    _expect_shape(name, arr, expected, desc)
    if not row_stride or row_stride == expected[-1]:
        return _c_array(arr)
    n1, e = expected[1], arr.itemsize
    if arr.flags.aligned and arr.strides == (n1 * row_stride * e, row_stride * e, e):
        return arr
    buf = np.empty(expected[:-1] + (row_stride,), dtype)
    buf[..., :expected[-1]] = arr
    return buf[..., :expected[-1]]


def _grads(out: tuple[Any, ...], has_bias: bool) -> LSTMGrads:
    dx, dh0, dc0, dwih, dwhh, db, dpeep, dwhr, dln = out
    return LSTMGrads(dx, dh0, dc0, dwih, dwhh, db if has_bias else None,
                     db.copy() if has_bias else None, dpeep, dwhr, dln)


def _probability(name: str, p: object, closed: bool = True) -> float:
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a float, got {type(p).__name__}")
    if not (0 <= p <= 1 if closed else 0 <= p < 1):
        raise ValueError(f"{name}: expected a probability in [0, 1{']' if closed else ')'}, "
                         f"got {p!r}")
    return float(p)


def _check_clip(clip: object) -> float | None:
    """``clip``: None (no clip) or a positive threshold."""
    if clip is None:
        return None
    if isinstance(clip, (bool, np.bool_)) or not isinstance(clip, (int, float, np.integer,
                                                                   np.floating)):
        raise TypeError(f"clip: expected a float or None, got {type(clip).__name__}")
    if not clip > 0:
        raise ValueError(f"clip: expected a positive threshold, got {clip!r}")
    return float(clip)


def _uint64(name: str, v: object) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if not 0 <= v < 2**64:
        raise ValueError(f"{name}: expected an int in [0, 2**64), got {v!r}")
    return int(v)


def _check_lengths(lengths: ArrayLike, T: int, B: int) -> AnyArray:
    """``lengths [B]``: integers in ``[0, T]`` (any order), as int64."""
    a = _to_numpy("lengths", lengths)
    if a.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected integers, got dtype {a.dtype}")
    _expect_shape("lengths", a, (B,), "[B]")
    if a.size and (a.min() < 0 or a.max() > T):
        bad = int(a[(a < 0) | (a > T)][0])
        raise ValueError(f"lengths: expected values in [0, T] = [0, {T}], got {bad}")
    return np.ascontiguousarray(a, dtype=np.int64)


_LN_PARTS = (("gain_x", 4, "[4H]"), ("gain_h", 4, "[4H]"), ("gain_c", 1, "[H]"),
             ("bias_c", 1, "[H]"))


def _check_layer_norm(layer_norm: Any, H: int, dt: np.dtype[Any]) -> tuple[AnyArray, ...]:
    """``layer_norm = (gain_x [4H], gain_h [4H], gain_c [H], bias_c [H])`` of x's dtype."""
    if not isinstance(layer_norm, (tuple, list)) or len(layer_norm) != 4:
        raise TypeError(f"layer_norm: expected a tuple (gain_x, gain_h, gain_c, bias_c), got "
                        f"{type(layer_norm).__name__}"
                        + (f" of length {len(layer_norm)}" if isinstance(layer_norm, (tuple, list))
                           else ""))
    out: list[AnyArray] = []
    for a, (nm, k, desc) in zip(layer_norm, _LN_PARTS):
        name = f"layer_norm[{len(out)}] ({nm})"
        arr = _float_array(name, a, dt, "x")
        _expect_shape(name, arr, (k * H,), desc)
        out.append(_c_array(arr))
    return tuple(out)


def _variant(a: _Args, training: bool, lengths: ArrayLike | None = None, reverse: bool = False,
             peephole: ArrayLike | None = None, clip: float | None = None,
             input_forget: bool = False, zoneout_h: float = 0.0, zoneout_c: float = 0.0,
             recurrent_dropout: float = 0.0, seed: int | None = 0,
             stream: int = 0, layer_norm: Any = None) -> dict[str, Any]:
    """The checked keyword arguments of ``_core.forward`` for a call's variants."""
    dt, (T, B) = a.x.dtype, a.x.shape[:2]
    H = a.w_hh.shape[0] // 4
    if a.batch_first:
        T, B = B, T
    kw: dict[str, Any] = dict(reverse=_flag("reverse", reverse),
                              input_forget=_flag("input_forget", input_forget))
    if lengths is not None:
        kw["lengths"] = _check_lengths(lengths, T, B)
    if peephole is not None:
        p = _float_array("peephole", peephole, dt, "x")
        _expect_shape("peephole", p, (3, H), "[3, H]")
        kw["peephole"] = _c_array(p)
    if layer_norm is not None:
        kw["layer_norm"] = _check_layer_norm(layer_norm, H, dt)
        if training:  # the normalised pre-activations and cell, kept for backward, and its scratch
            _check_memory("x, layer_norm", T * B * 19 * H * dt.itemsize,
                          f"a LayerNorm-LSTM's workspace for T*B = {T * B} rows, H = {H}")
    clip = _check_clip(clip)
    if clip is not None:
        kw["clip"] = clip
    kw["zoneout_h"] = _probability("zoneout_h", zoneout_h)
    kw["zoneout_c"] = _probability("zoneout_c", zoneout_c)
    kw["recurrent_dropout"] = _probability("recurrent_dropout", recurrent_dropout, closed=False)
    random = training and (kw["zoneout_h"] or kw["zoneout_c"] or kw["recurrent_dropout"])
    if seed is None:
        seed = int(np.random.default_rng().integers(2**63)) if random else 0
    kw["seed"], kw["stream"] = _uint64("seed", seed), _uint64("stream", stream)
    return kw


# ---- sequence ----------------------------------------------------------------------------------


def _forward(x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike, b_ih: ArrayLike | None,
             b_hh: ArrayLike | None, h0: ArrayLike | None, c0: ArrayLike | None,
             batch_first: bool, training: bool, naive: bool = False,
             w_hr: ArrayLike | None = None, y_out: AnyArray | None = None,
             drop: AnyArray | None = None, y_drop: AnyArray | None = None,
             **variant: Any) -> tuple[Any, ...]:
    """:func:`lstm` (:func:`lstm_train` with ``training``); ``y_out``: write ``y`` into it, a
    view whose rows lie equally spaced (a pass's half of a bidirectional layer's ``y``).
    ``drop``, ``y_drop`` (training, laid out as ``y``): the dropout after the pass, fused:
    ``y * drop`` goes into ``y_drop``, and the tape's backward takes ``dy`` for ``y_drop``."""
    a = _check_args(x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_first, training, w_hr=w_hr)
    kw = _variant(a, training, **variant)
    if a.w_hr is not None:
        kw["w_hr"] = a.w_hr
    y, hn, cn, cache = _core.forward(a.x, a.w_ih, a.w_hh, a.bias, a.h0, a.c0,
                                     bool(batch_first), training, naive, y_out=y_out,
                                     drop=drop, y_drop=y_drop, **kw)
    tape = Tape(cache, a.has_bias, False, a.x.dtype) if training else None
    return y, hn, cn, tape


def lstm(x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike, b_ih: ArrayLike | None = None,
         b_hh: ArrayLike | None = None, h0: ArrayLike | None = None, c0: ArrayLike | None = None,
         *, batch_first: bool = False, lengths: ArrayLike | None = None, reverse: bool = False,
         w_hr: ArrayLike | None = None, peephole: ArrayLike | None = None,
         clip: float | None = None,
         input_forget: bool = False, zoneout_h: float = 0.0, zoneout_c: float = 0.0,
         layer_norm: tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike] | None = None,
         ) -> tuple[Array, Array, Array]:
    """Run an LSTM over a whole sequence (inference: no workspace is kept).

    Returns ``(y, h_n, c_n)``: every step's hidden state, and the final hidden and cell state.
    See the module docstring for the shapes and the variants.
    """
    y, hn, cn, _ = _forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_first, False, w_hr=w_hr,
                            lengths=lengths, reverse=reverse, peephole=peephole, clip=clip,
                            input_forget=input_forget, zoneout_h=zoneout_h, zoneout_c=zoneout_c,
                            layer_norm=layer_norm)
    return y, hn, cn


def lstm_train(x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike, b_ih: ArrayLike | None = None,
               b_hh: ArrayLike | None = None, h0: ArrayLike | None = None,
               c0: ArrayLike | None = None, *, batch_first: bool = False,
               lengths: ArrayLike | None = None, reverse: bool = False,
               w_hr: ArrayLike | None = None, peephole: ArrayLike | None = None,
               clip: float | None = None,
               input_forget: bool = False, zoneout_h: float = 0.0, zoneout_c: float = 0.0,
               recurrent_dropout: float = 0.0, seed: int | None = None, stream: int = 0,
               layer_norm: tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike] | None = None,
               ) -> tuple[Array, Array, Array, Tape]:
    """Like :func:`lstm`, and also keep the workspace backward needs.

    Zoneout and recurrent dropout draw random masks from ``seed`` (``None``: a fresh one) and
    ``stream``. Returns ``(y, h_n, c_n, tape)``; pass ``tape`` to :func:`lstm_backward`.
    """
    y, hn, cn, tape = _forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_first, True, w_hr=w_hr,
                               lengths=lengths, reverse=reverse, peephole=peephole, clip=clip,
                               input_forget=input_forget, zoneout_h=zoneout_h,
                               zoneout_c=zoneout_c, recurrent_dropout=recurrent_dropout,
                               seed=seed, stream=stream, layer_norm=layer_norm)
    return y, hn, cn, tape


def lstm_backward(tape: Tape, dy: ArrayLike | None, dh_n: ArrayLike | None = None,
                  dc_n: ArrayLike | None = None) -> LSTMGrads:
    """Backpropagate through time.

    ``dy`` is the gradient of the loss with respect to ``y`` (or ``None`` if the loss does not
    depend on ``y``); ``dh_n`` and ``dc_n`` those with respect to ``h_n`` and ``c_n``.
    Returns :class:`LSTMGrads`.
    """
    return _backward(tape, dy, dh_n, dc_n)


def _backward(tape: Tape, dy: ArrayLike | None, dh_n: ArrayLike | None,
              dc_n: ArrayLike | None, naive: bool = False,
              dx_add: AnyArray | None = None) -> LSTMGrads:
    """:func:`lstm_backward`; with ``dx_add`` (x's shape, C-contiguous), ``dx`` is added into
    it, which is returned as ``dx`` (a bidirectional layer's second pass)."""
    t = _check_tape(tape, cell=False)
    c, dt = t._cache, t._dtype
    yshape = (c.B, c.T, c.R) if c.batch_first else (c.T, c.B, c.R)
    u = "P" if c.P else "H"  # units of h
    ydesc = f"[B, T, {u}]" if c.batch_first else f"[T, B, {u}]"
    dya = _grad_array("dy", dy, yshape, ydesc, dt, c.y_stride)
    dha = _grad_array("dh_n", dh_n, (c.B, c.R), f"[B, {u}]", dt)
    dca = _grad_array("dc_n", dc_n, (c.B, c.H), "[B, H]", dt)
    _check_memory("tape", c.T * c.B * (4 * c.H + c.I) * dt.itemsize, "backward")
    return _grads(_core.backward(c, dya, dha, dca, naive, dx_add=dx_add), t._has_bias)


# ---- single cell step ------------------------------------------------------------------------


def lstm_cell(x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike, b_ih: ArrayLike | None = None,
              b_hh: ArrayLike | None = None, h: ArrayLike | None = None,
              c: ArrayLike | None = None) -> tuple[Array, Array]:
    """One LSTM step: ``x [B, I]``, state ``h, c [B, H]`` (zeros if ``None``).

    Returns the new state ``(h, c)``.
    """
    h2, c2, _ = _cell(x, w_ih, w_hh, b_ih, b_hh, h, c, False)
    return h2, c2


def lstm_cell_train(x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike,
                    b_ih: ArrayLike | None = None, b_hh: ArrayLike | None = None,
                    h: ArrayLike | None = None,
                    c: ArrayLike | None = None) -> tuple[Array, Array, Tape]:
    """Like :func:`lstm_cell`, and also return the tape for :func:`lstm_cell_backward`."""
    h2, c2, tape = _cell(x, w_ih, w_hh, b_ih, b_hh, h, c, True)
    assert tape is not None
    return h2, c2, tape


def _cell(x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike, b_ih: ArrayLike | None,
          b_hh: ArrayLike | None, h: ArrayLike | None, c: ArrayLike | None,
          training: bool) -> tuple[Array, Array, Tape | None]:
    a = _check_args(x, w_ih, w_hh, b_ih, b_hh, h, c, False, training, cell=True)
    y, _, cn, cache = _core.forward(a.x, a.w_ih, a.w_hh, a.bias, a.h0, a.c0, False, training)
    tape = Tape(cache, a.has_bias, True, a.x.dtype) if training else None
    return y[0], cn, tape


def lstm_cell_backward(tape: Tape, dh: ArrayLike | None,
                       dc: ArrayLike | None = None) -> LSTMGrads:
    """Backward of one cell step, given the gradients of the new ``h`` and ``c``.

    Returns :class:`LSTMGrads`; ``dh0`` and ``dc0`` are the gradients of the step's input
    state ``h`` and ``c``.
    """
    t = _check_tape(tape, cell=True)
    cc, dt = t._cache, t._dtype
    dha = _grad_array("dh", dh, (cc.B, cc.H), "[B, H]", dt)
    dca = _grad_array("dc", dc, (cc.B, cc.H), "[B, H]", dt)
    out = _core.backward(cc, None if dha is None else dha[None], None, dca)
    dx, *rest = out
    return _grads((dx[0], *rest), t._has_bias)
