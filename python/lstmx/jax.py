"""``lstmx.jax.lstm``: lstmx's LSTM as a differentiable JAX function.

The only module of lstmx that imports jax. :func:`lstm` is a ``jax.custom_vjp`` whose forward
and backward call lstmx's kernels through ``jax.pure_callback``, so it works under ``jax.jit``,
``jax.grad``/``jax.vjp`` and ``jax.vmap`` (one kernel call per batch element:
``vmap_method="sequential"``). Arrays are float32 or float64 (``jax.config.update(
"jax_enable_x64", True)`` or ``with jax.enable_x64(True):``), on the CPU.

The training tape (lstmx's C++ workspace) cannot cross into JAX, so the backward pass re-runs
the training forward (:func:`lstmx.lstm_train`) from the saved inputs, then calls
:func:`lstmx.lstm_backward`; the forward pass is the inference one (:func:`lstmx.lstm`). Nothing
is kept between the two, so jit, repeated and interleaved ``grad`` and ``vjp`` functions that are
never called are all safe; the price is one extra forward pass per backward (training then
costs about 4 forward passes instead of 3). Only first derivatives: the backward itself is not
differentiable (``grad`` of ``grad`` raises JAX's error for differentiating a ``pure_callback``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import functional as _f

__all__ = ["lstm"]

_SDS: Any = jax.ShapeDtypeStruct  # (shape, dtype) of a callback's result; jax leaves it untyped

# The float arguments in the order of lstmx.lstm, each with its name in LSTMGrads.
_GRADS = dict(x="dx", w_ih="dw_ih", w_hh="dw_hh", b_ih="db_ih", b_hh="db_hh", h0="dh0",
              c0="dc0", w_hr="dw_hr", peephole="dpeephole", layer_norm="dlayer_norm")


class _Flags(NamedTuple):
    """The static (hashable, non-differentiable) arguments of a call."""

    batch_first: bool
    reverse: bool
    clip: float | None
    input_forget: bool


def _array(name: str, a: Any, dtype: Any = None) -> jax.Array:
    """``a`` as a JAX float array of ``dtype`` (x's; lists and numbers take it)."""
    try:
        arr = jnp.asarray(a, None if hasattr(a, "dtype") else dtype)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: cannot be read as an array ({type(a).__name__}): {e}") from None
    _f._check_dtype(name, arr.dtype, dtype, module="jnp")
    return arr


def _lengths(lengths: Any, T: int, B: int) -> jax.Array:
    """``lengths [B]`` as int32; values are checked here when known, else by the kernel call."""
    if isinstance(lengths, jax.core.Tracer):  # under jit: shape and dtype only
        if not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise TypeError(f"lengths: expected integers, got dtype {lengths.dtype}")
        _f._expect_shape("lengths", lengths, (B,), "[B]")
        return lengths.astype(jnp.int32)
    return jnp.asarray(_f._check_lengths(lengths, T, B), jnp.int32)


def _checked(x: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any, h0: Any, c0: Any,
             lengths: Any, w_hr: Any, peephole: Any, layer_norm: Any,
             batch_first: bool) -> dict[str, Any]:
    """Every argument checked (shapes and dtypes, before any tracing), as JAX arrays or None."""
    dt = _array("x", x).dtype
    p: dict[str, Any] = dict(x=_array("x", x, dt), w_ih=_array("w_ih", w_ih, dt),
                             w_hh=_array("w_hh", w_hh, dt))
    if p["x"].ndim != 3:
        raise ValueError(f"x: expected a 3-D array {'[B, T, I]' if batch_first else '[T, B, I]'}"
                         f", got a {p['x'].ndim}-D array of shape {p['x'].shape}")
    T, B, I = p["x"].shape
    if batch_first:
        T, B = B, T
    p["w_hr"] = None if w_hr is None else _array("w_hr", w_hr, dt)
    if p["w_hr"] is None:
        H = R = _f._check_weights(p["w_ih"], p["w_hh"], I)
    else:
        H, R = _f._check_projected(p["w_ih"], p["w_hh"], p["w_hr"], I)
    u = "H" if p["w_hr"] is None else "P"
    for nm, a, shape, desc in (("b_ih", b_ih, (4 * H,), "[4H]"), ("b_hh", b_hh, (4 * H,), "[4H]"),
                               ("h0", h0, (B, R), f"[B, {u}]"), ("c0", c0, (B, H), "[B, H]"),
                               ("peephole", peephole, (3, H), "[3, H]")):
        p[nm] = None if a is None else _array(nm, a, dt)
        if a is not None:
            _f._expect_shape(nm, p[nm], shape, desc)
    p["layer_norm"] = None
    if layer_norm is not None:
        if not isinstance(layer_norm, (tuple, list)) or len(layer_norm) != 4:
            raise TypeError(f"layer_norm: expected a tuple (gain_x, gain_h, gain_c, bias_c), "
                            f"got {type(layer_norm).__name__}")
        ln = []
        for i, (a, (nm, k, desc)) in enumerate(zip(layer_norm, _f._LN_PARTS)):
            ln.append(_array(f"layer_norm[{i}] ({nm})", a, dt))
            _f._expect_shape(f"layer_norm[{i}] ({nm})", ln[-1], (k * H,), desc)
        p["layer_norm"] = tuple(ln)
    p["lengths"] = None if lengths is None else _lengths(lengths, T, B)
    return p


def _kernel_args(p: dict[str, Any], fl: _Flags) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """lstmx.lstm's positional and keyword arguments from the callback's NumPy arrays."""
    args = tuple(p[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"))
    kw = dict(batch_first=fl.batch_first, reverse=fl.reverse, clip=fl.clip,
              input_forget=fl.input_forget, lengths=p["lengths"], w_hr=p["w_hr"],
              peephole=p["peephole"], layer_norm=p["layer_norm"])
    return args, kw


def _forward(fl: _Flags, p: dict[str, Any]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    x, (H, R) = p["x"], (p["w_hh"].shape[0] // 4, p["w_hh"].shape[1])
    T, B = (x.shape[1], x.shape[0]) if fl.batch_first else x.shape[:2]
    out = (_SDS((B, T, R) if fl.batch_first else (T, B, R), x.dtype),
           _SDS((B, R), x.dtype), _SDS((B, H), x.dtype))

    def run(q: dict[str, Any]) -> tuple[np.ndarray, ...]:
        args, kw = _kernel_args(q, fl)
        return _f.lstm(*args, **kw)

    y, hn, cn = jax.pure_callback(run, out, p, vmap_method="sequential")
    return y, (hn, cn)


def _fwd(fl: _Flags, p: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return _forward(fl, p), p  # the inputs are the residuals: backward re-runs the forward


def _bwd(fl: _Flags, p: dict[str, Any], cts: Any) -> tuple[dict[str, Any]]:
    dy, (dhn, dcn) = cts
    given = [k for k in _GRADS if p[k] is not None]
    out = {k: jax.tree.map(lambda a: _SDS(a.shape, a.dtype), p[k])
           for k in given}

    def run(q: dict[str, Any], dy: np.ndarray, dhn: np.ndarray, dcn: np.ndarray
            ) -> dict[str, Any]:
        args, kw = _kernel_args(q, fl)
        *_, tape = _f.lstm_train(*args, **kw, seed=0)
        g = _f.lstm_backward(tape, dy, dhn, dcn)
        return {k: getattr(g, _GRADS[k]) for k in given}

    grads = jax.pure_callback(run, out, p, dy, dhn, dcn, vmap_method="sequential")
    return ({k: grads.get(k) for k in p},)  # None: no gradient (lengths, absent arguments)


_lstm = jax.custom_vjp(_forward, nondiff_argnums=(0,))
_lstm.defvjp(_fwd, _bwd)


def lstm(x: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None, h0: Any = None,
         c0: Any = None, *, batch_first: bool = False, lengths: Any = None,
         reverse: bool = False, w_hr: Any = None, peephole: Any = None,
         clip: float | None = None, input_forget: bool = False,
         layer_norm: tuple[Any, Any, Any, Any] | None = None,
         ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """:func:`lstmx.lstm` for JAX: differentiable, usable under ``jit``, ``grad`` and ``vmap``.

    The arguments and variants are :func:`lstmx.lstm`'s (shapes in :mod:`lstmx.functional`),
    as JAX arrays (or anything ``jnp.asarray`` reads), all of x's dtype; the deterministic
    variants only (no zoneout or dropout). Returns ``(y, (h_n, c_n))``. Gradients flow to every
    float argument given (``x``, the weights and biases, ``h0``, ``c0``, ``w_hr``, ``peephole``,
    ``layer_norm``), not to ``lengths`` (integers; a traced array is fine under ``jit``, its
    values are then checked when the kernel runs, and a bad one raises there).
    Shapes and dtypes are checked here: a bad argument raises ``TypeError`` or ``ValueError``
    naming it.
    """
    fl = _Flags(_f._flag("batch_first", batch_first), _f._flag("reverse", reverse),
                _f._check_clip(clip), _f._flag("input_forget", input_forget))
    p = _checked(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, w_hr, peephole, layer_norm,
                 fl.batch_first)
    return _lstm(fl, p)
