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

Every argument is checked here, at the boundary: a bad one raises ``TypeError`` or
``ValueError`` naming it, with the expected and the actual shape. float32 and float64 are
supported; all arrays must share ``x``'s dtype. Non-contiguous inputs are copied.
"""

from __future__ import annotations

import os
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
ArrayLike = Any  # numpy arrays, torch CPU tensors, nested lists of floats


class LSTMGrads(NamedTuple):
    """Gradients from :func:`lstm_backward` or :func:`lstm_cell_backward`.

    ``dx`` has the shape of ``x``; ``dh0``/``dc0`` that of the initial state (for a cell step:
    of ``h``/``c``); ``dw_*`` that of the weights. ``db_ih`` and ``db_hh`` are equal (both biases
    enter the gates the same way) and are ``None`` when the forward pass had no bias.
    """

    dx: Array
    dh0: Array
    dc0: Array
    dw_ih: Array
    dw_hh: Array
    db_ih: Array | None
    db_hh: Array | None


class Tape:
    """Opaque record of a training forward pass; pass it to the matching backward.

    It owns the C++ workspace (a copy of the inputs and weights, the activated gates and the
    cell states), so later changes to the caller's arrays do not affect backward. A tape can be
    used for any number of backward calls.
    """

    __slots__ = ("_cache", "_has_bias", "_cell", "_dtype", "_unbatched")

    def __init__(self, cache: Any, has_bias: bool, cell: bool, dtype: np.dtype[Any]) -> None:
        self._cache = cache
        self._has_bias = has_bias
        self._cell = cell
        self._dtype = dtype
        self._unbatched = False  # set by lstmx.LSTM for 2-D (unbatched) input

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


def _to_numpy(name: str, a: ArrayLike) -> np.ndarray:
    """Any array-like (numpy, torch CPU tensor, list) to an ndarray, without casting."""
    if a is None:
        raise TypeError(f"{name}: expected an array, got None")
    if hasattr(a, "detach") and hasattr(a, "cpu") and hasattr(a, "numpy"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: cannot be read as an array ({type(a).__name__}): {e}") from None


def _float_array(name: str, a: ArrayLike, dtype: np.dtype[Any] | None = None) -> np.ndarray:
    arr = _to_numpy(name, a)
    if arr.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected float32 or float64 data, got dtype {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name}: dtype {arr.dtype} does not match x's dtype {dtype}; "
                        f"cast it with .astype(np.{dtype})")
    return arr


def _expect_shape(name: str, arr: np.ndarray, expected: tuple[int, ...], desc: str) -> None:
    if arr.shape != expected:
        raise ValueError(f"{name}: expected shape {desc} = {expected}, got {arr.shape}")


def _check_memory(nbytes: int, what: str) -> None:
    """Refuse an allocation the machine cannot hold, before it is attempted."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 1 << 62
    if nbytes > min(total, 1 << 62):
        raise MemoryError(f"{what} would need {nbytes / 2**30:.1f} GiB; this machine has "
                          f"{total / 2**30:.1f} GiB")


class _Args(NamedTuple):
    x: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    bias: np.ndarray | None
    h0: np.ndarray | None
    c0: np.ndarray | None
    has_bias: bool


def _check_args(x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike, b_ih: ArrayLike | None,
                b_hh: ArrayLike | None, h0: ArrayLike | None, c0: ArrayLike | None,
                batch_first: bool, training: bool, x_desc: str = "") -> _Args:
    xa = _float_array("x", x)
    if xa.ndim != 3:
        d = x_desc or ("[B, T, I]" if batch_first else "[T, B, I]")
        raise ValueError(f"x: expected a 3-D array {d}, got a {xa.ndim}-D array of shape "
                         f"{xa.shape}")
    dt = xa.dtype
    T, B = (xa.shape[1], xa.shape[0]) if batch_first else (xa.shape[0], xa.shape[1])
    I = xa.shape[2]
    whh = _float_array("w_hh", w_hh, dt)
    if whh.ndim != 2 or whh.shape[0] != 4 * whh.shape[1]:
        raise ValueError(f"w_hh: expected shape [4H, H], got {whh.shape}")
    H = whh.shape[1]
    wih = _float_array("w_ih", w_ih, dt)
    _expect_shape("w_ih", wih, (4 * H, I), "[4H, I]")
    bias = None
    for nm, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            ba = _float_array(nm, b, dt)
            _expect_shape(nm, ba, (4 * H,), "[4H]")
            bias = ba if bias is None else bias + ba
    state = []
    for nm, s in (("h0", h0), ("c0", c0)):
        if s is not None:
            sa = _float_array(nm, s, dt)
            _expect_shape(nm, sa, (B, H), "[B, H]")
            state.append(np.ascontiguousarray(sa))
        else:
            state.append(None)
    # Token buffers: y, the input projection, and in training the cache and backward scratch.
    per_token = H * (1 + 4 + (4 + 1 + 1 + 4 if training else 0)) + (I if training else 0)
    _check_memory(T * B * per_token * dt.itemsize, f"an LSTM over T*B = {T * B} rows, H = {H}")
    return _Args(np.ascontiguousarray(xa), np.ascontiguousarray(wih), np.ascontiguousarray(whh),
                 None if bias is None else np.ascontiguousarray(bias), state[0], state[1],
                 b_ih is not None or b_hh is not None)


def _check_tape(tape: Any, cell: bool) -> Tape:
    if not isinstance(tape, Tape):
        raise TypeError(f"tape: expected an lstmx.Tape, got {type(tape).__name__}")
    if tape._cell != cell:
        src, dst = ("lstm_cell_train", "lstm_cell_backward") if tape._cell else ("lstm_train",
                                                                                  "lstm_backward")
        raise ValueError(f"tape: this tape comes from {src}; pass it to {dst}")
    return tape


def _grad_array(name: str, a: ArrayLike | None, expected: tuple[int, ...], desc: str,
                dtype: np.dtype[Any]) -> np.ndarray | None:
    if a is None:
        return None
    arr = _float_array(name, a, dtype)
    _expect_shape(name, arr, expected, desc)
    return np.ascontiguousarray(arr)


def _grads(out: tuple[Any, ...], has_bias: bool) -> LSTMGrads:
    dx, dh0, dc0, dwih, dwhh, db = out
    return LSTMGrads(dx, dh0, dc0, dwih, dwhh, db if has_bias else None,
                     db.copy() if has_bias else None)


# ---- sequence ----------------------------------------------------------------------------------


def _forward(x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike, b_ih: ArrayLike | None,
             b_hh: ArrayLike | None, h0: ArrayLike | None, c0: ArrayLike | None,
             batch_first: bool, training: bool, naive: bool = False) -> tuple[Any, ...]:
    a = _check_args(x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_first, training)
    y, hn, cn, cache = _core.forward(a.x, a.w_ih, a.w_hh, a.bias, a.h0, a.c0,
                                     bool(batch_first), training, naive)
    tape = Tape(cache, a.has_bias, False, a.x.dtype) if training else None
    return y, hn, cn, tape


def lstm(x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike, b_ih: ArrayLike | None = None,
         b_hh: ArrayLike | None = None, h0: ArrayLike | None = None, c0: ArrayLike | None = None,
         *, batch_first: bool = False) -> tuple[Array, Array, Array]:
    """Run an LSTM over a whole sequence (inference: no workspace is kept).

    Returns ``(y, h_n, c_n)``: every step's hidden state, and the final hidden and cell state.
    See the module docstring for the shapes.
    """
    y, hn, cn, _ = _forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_first, False)
    return y, hn, cn


def lstm_train(x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike, b_ih: ArrayLike | None = None,
               b_hh: ArrayLike | None = None, h0: ArrayLike | None = None,
               c0: ArrayLike | None = None, *,
               batch_first: bool = False) -> tuple[Array, Array, Array, Tape]:
    """Like :func:`lstm`, and also keep the workspace backward needs.

    Returns ``(y, h_n, c_n, tape)``; pass ``tape`` to :func:`lstm_backward`.
    """
    y, hn, cn, tape = _forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_first, True)
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
              dc_n: ArrayLike | None, naive: bool = False) -> LSTMGrads:
    t = _check_tape(tape, cell=False)
    c, dt = t._cache, t._dtype
    yshape = (c.B, c.T, c.H) if c.batch_first else (c.T, c.B, c.H)
    ydesc = "[B, T, H]" if c.batch_first else "[T, B, H]"
    dya = _grad_array("dy", dy, yshape, ydesc, dt)
    dha = _grad_array("dh_n", dh_n, (c.B, c.H), "[B, H]", dt)
    dca = _grad_array("dc_n", dc_n, (c.B, c.H), "[B, H]", dt)
    _check_memory(c.T * c.B * (4 * c.H + c.I) * dt.itemsize, "backward")
    return _grads(_core.backward(c, dya, dha, dca, naive), t._has_bias)


# ---- single cell step ------------------------------------------------------------------------


def _cell_x(x: ArrayLike) -> np.ndarray:
    xa = _float_array("x", x)
    if xa.ndim != 2:
        raise ValueError(f"x: expected a 2-D array [B, I], got a {xa.ndim}-D array of shape "
                         f"{xa.shape}")
    return xa[None]


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
    a = _check_args(_cell_x(x), w_ih, w_hh, b_ih, b_hh, h, c, False, training, "[B, I]")
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
