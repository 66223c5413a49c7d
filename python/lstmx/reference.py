"""Plain NumPy LSTM: the oracle every lstmx result is tested against.

Written for clarity only, one step at a time. The plain cell, from the seed equations
(``../shared/seeds``):

    i_t = sigmoid(W_i [h_{t-1}, x_t] + b_i)       input gate
    f_t = sigmoid(W_f [h_{t-1}, x_t] + b_f)       forget gate
    g_t = tanh   (W_g [h_{t-1}, x_t] + b_g)       candidate memory (C~)
    o_t = sigmoid(W_o [h_{t-1}, x_t] + b_o)       output gate
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

and every variant of ``docs/variants.md`` (issue 4), forward and backward: per-sequence
lengths, reverse, projection (``w_hr``), peepholes, gate clipping, coupled input-forget gate,
layer normalisation, zoneout, recurrent dropout (:func:`lstm_forward`, :func:`lstm_backward`),
and stacks of layers in PyTorch's layout with between-layer dropout
(:func:`lstm_stack_forward`, :func:`lstm_stack_backward`). Random masks come from the
counter-based hash :func:`uniform`, identical in the C++ kernels.

Two parameter layouts are provided:

* lstmx's (PyTorch's): ``w_ih [4H, I]``, ``w_hh [4H, H]``, ``b_ih, b_hh [4H]``, gates stacked
  in the order i, f, g, o; ``gates = x_t w_ih^T + h_{t-1} w_hh^T + b_ih + b_hh``.
* the seeds': one matrix per gate applied to the concatenation ``[h_{t-1}, x_t]`` as in seed
  000 (``concat @ W_k + b_k`` with ``W_k [H + I, H]``), keys ``W_i, W_f, W_g, W_o, b_i, b_f,
  b_g, b_o``. :func:`to_seed_params` and :func:`from_seed_params` convert between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# The argument checks of the public API, so that the oracle refuses bad input the same way.
from .functional import (AnyArray, _call_dtype, _check_args, _check_memory, _check_weights,
                         _expect_shape, _flag, _float_array, _grad_array, _to_numpy)

GATES = ("i", "f", "g", "o")
LN_EPS = 1e-5  # layer norm's epsilon (biased variance)


def sigmoid(z: AnyArray) -> AnyArray:
    """Logistic function, without overflow for any input (float32 or float64)."""
    z = _float_array("z", z)
    _check_memory("z", 4 * z.nbytes, f"the sigmoid of {z.size} numbers")
    e = np.exp(-np.abs(z))
    s: AnyArray = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return s


# ---- random masks: the counter-based hash --------------------------------------------------

_U64 = 1 << 64


def _uint(name: str, v: Any, high: int = _U64) -> int:
    """An int argument in ``[0, high)`` (Python or NumPy ints; not bools)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if not 0 <= int(v) < high:
        raise ValueError(f"{name}: expected an int in [0, {high}), got {v}")
    return int(v)


def uniform(seed: int, stream: int, S: int, B: int, n: int) -> AnyArray:
    """The hash ``u(seed, stream, s, b, j, n)`` of every ``s < S, b < B, j < n``: float64
    ``[S, B, n]`` in ``[0, 1)``, multiples of ``2^-24``. All arithmetic is modulo ``2^64``::

        idx = (s * B + b) * n + j
        z = seed + (stream + 1) * 0x9E3779B97F4A7C15 + idx * 0xD1B54A32D192ED03
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;  z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        z ^= z >> 31;  u = (z >> 40) * 2^-24
    """
    seed, stream = _uint("seed", seed), _uint("stream", stream)
    S, B, n = (_uint(k, v, 1 << 62) for k, v in (("S", S), ("B", B), ("n", n)))
    _check_memory("S, B, n", 3 * 8 * S * B * n, f"{S * B * n} random numbers")
    base = (seed + (stream + 1) * 0x9E3779B97F4A7C15) % _U64
    # uint64 arrays only: NumPy wraps array arithmetic silently (numpy scalars would warn)
    idx = np.arange(S * B * n, dtype=np.uint64).reshape(S, B, n)  # (s * B + b) * n + j
    z = np.array([base], np.uint64) + idx * np.array([0xD1B54A32D192ED03], np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) * 2.0**-24


# ---- argument checks of the variants -------------------------------------------------------


def _probability(name: str, p: Any, below_one: bool = False) -> float:
    """A probability in ``[0, 1]`` (``[0, 1)`` if ``below_one``)."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer,
                                                                np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(p).__name__}")
    if not (0 <= p < 1 if below_one else 0 <= p <= 1):
        raise ValueError(f"{name}: expected a probability in [0, {'1)' if below_one else '1]'}, "
                         f"got {p!r}")
    return float(p)


def _check_lengths(lengths: Any, T: int, B: int) -> AnyArray:
    """``lengths [B]`` of ints in ``[0, T]``, as int64 (all ``T`` when None)."""
    if lengths is None:
        return np.full(B, T, np.int64)
    a = _to_numpy("lengths", lengths)
    if a.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected integers, got dtype {a.dtype}")
    _expect_shape("lengths", a, (B,), "[B]")
    if B and (a.min() < 0 or a.max() > T):
        raise ValueError(f"lengths: expected 0 <= length <= T = {T}, got {a.tolist()}")
    return a.astype(np.int64)


def _check_clip(clip: Any) -> float | None:
    if clip is None:
        return None
    if isinstance(clip, (bool, np.bool_)) or not isinstance(clip, (int, float, np.integer,
                                                                      np.floating)):
        raise TypeError(f"clip: expected a number or None, got {type(clip).__name__}")
    if not clip > 0:
        raise ValueError(f"clip: expected a positive number, got {clip!r}")
    return float(clip)


def _check_pass(x: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any, h0: Any, c0: Any,
                batch_first: Any, w_hr: Any) -> tuple[Any, AnyArray, AnyArray | None]:
    """The checks of :func:`lstmx.functional._check_args`, which know no projection: with
    ``w_hr [P, H]``, ``w_hh`` is ``[4H, P]`` and ``h0`` is ``[B, P]``, checked here, and
    ``_check_args`` sees a stand-in ``[4H, H]`` w_hh and no h0. Returns ``(args, w_hh, h0)``.
    """
    if w_hr is None:
        a = _check_args(x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_first, training=True)
        return a, a.w_hh, a.h0
    dt, src = _call_dtype(("x", x), ("w_hh", w_hh), ("w_ih", w_ih))
    w_hr = _float_array("w_hr", w_hr, dt, src)
    if w_hr.ndim != 2:
        raise ValueError(f"w_hr: expected shape [P, H], got {w_hr.shape}")
    P, H = w_hr.shape
    w_hh = _float_array("w_hh", w_hh, dt, src)
    _expect_shape("w_hh", w_hh, (4 * H, P), "[4H, P]")
    a = _check_args(x, w_ih, np.broadcast_to(np.zeros((), dt), (4 * H, H)), b_ih, b_hh, None,
                    c0, batch_first, training=True)
    B = a.x.shape[0 if _flag("batch_first", batch_first) else 1]
    if h0 is not None:
        h0 = _float_array("h0", h0, dt, src)
        _expect_shape("h0", h0, (B, P), "[B, P]")
    return a, w_hh, h0


def _check_layer_norm(layer_norm: Any, H: int, dt: np.dtype[Any]) -> tuple[AnyArray, ...] | None:
    if layer_norm is None:
        return None
    if not isinstance(layer_norm, (tuple, list)) or len(layer_norm) != 4:
        raise TypeError("layer_norm: expected None or a tuple (gain_x [4H], gain_h [4H], "
                        f"gain_c [H], bias_c [H]), got {type(layer_norm).__name__}")
    out = []
    for k, (a, n, desc) in enumerate(zip(layer_norm, (4 * H, 4 * H, H, H),
                                         ("[4H]", "[4H]", "[H]", "[H]"))):
        arr = _float_array(f"layer_norm[{k}]", a, dt)
        _expect_shape(f"layer_norm[{k}]", arr, (n,), desc)
        out.append(arr)
    return tuple(out)


# ---- int8: dynamic quantization (FrozenLSTM with weight_dtype=np.int8) ---------------------


def quantize_int8(v: AnyArray) -> tuple[AnyArray, AnyArray]:
    """Each row (last axis) of float32 ``v`` as integers in ``[-127, 127]`` and a scale, as
    lstmx's int8 step quantizes weights and activations: ``m = max |v|``, ``scale = m / 127``,
    ``q = rint(v * (127 / m))`` in float32 (ties to even). Rows with ``m < 2^-100`` give zeros
    and scale 0; rows that are not finite give zeros and a NaN scale (so NaN results). Returns
    ``(q [..., n] int64, scale [...] float32)``."""
    v = np.asarray(v, np.float32)
    f32 = np.float32
    finite = np.isfinite(v).all(-1)
    with np.errstate(all="ignore"):
        m = np.where(finite, np.abs(v).max(-1, initial=f32(0)), f32(0)).astype(f32)
        use = m >= f32(2.0**-100)
        inv = np.where(use, f32(127) / np.where(use, m, f32(1)), f32(0)).astype(f32)
        scale = np.where(finite, np.where(use, m / f32(127), f32(0)), np.nan).astype(f32)
        q = np.rint(np.where(use[..., None], v, f32(0)) * inv[..., None])
    return q.astype(np.int64), scale


def _int8_product(a: AnyArray, qw: AnyArray, sw: AnyArray) -> AnyArray:
    """``a [n, K] @ w^T`` as the int8 step computes it from ``w``'s :func:`quantize_int8`
    ``(qw [4H, K], sw [4H])``: ``float32(qa @ qw^T) * (sa * sw)``, the sums exact."""
    qa, sa = quantize_int8(a)
    out: AnyArray = (qa @ qw.T).astype(np.float32) * (sa[:, None] * sw[None, :])
    return out


# ---- one pass: one layer, one direction ----------------------------------------------------


def _normalize(v: AnyArray) -> tuple[AnyArray, AnyArray]:
    """Layer norm without gain or bias over the last axis: ``(n, 1 / sigma)``."""
    mu = v.mean(-1, keepdims=True)
    inv = 1.0 / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + LN_EPS)
    return (v - mu) * inv, inv


def _normalize_backward(dn: AnyArray, n: AnyArray, inv: AnyArray) -> AnyArray:
    """Gradient through :func:`_normalize`, given that of its output ``n``."""
    dv: AnyArray = inv * (dn - dn.mean(-1, keepdims=True) - n * (dn * n).mean(-1, keepdims=True))
    return dv


def _clip_pass(z: AnyArray, clip: float | None) -> AnyArray | float:
    """Where the gradient passes the clamp: 1 where ``|z| <= clip``, 0 where clipped."""
    return 1.0 if clip is None else (np.abs(z) <= clip).astype(z.dtype)


def lstm_forward(x: AnyArray, w_ih: AnyArray, w_hh: AnyArray,
                 b_ih: AnyArray | None = None, b_hh: AnyArray | None = None,
                 h0: AnyArray | None = None, c0: AnyArray | None = None,
                 batch_first: bool = False, *, lengths: Any = None, reverse: bool = False,
                 w_hr: AnyArray | None = None, peephole: AnyArray | None = None,
                 clip: float | None = None, input_forget: bool = False,
                 layer_norm: tuple[AnyArray, AnyArray, AnyArray, AnyArray] | None = None,
                 zoneout_h: float = 0.0, zoneout_c: float = 0.0, recurrent_dropout: float = 0.0,
                 training: bool = False, seed: int = 0,
                 stream_base: int = 0, int8: bool = False
                 ) -> tuple[AnyArray, AnyArray, AnyArray, dict[str, Any]]:
    """One pass (one layer, one direction) with every variant of ``docs/variants.md``.

    Returns ``(y, h_n, c_n, cache)``: ``y [T, B, R]`` (``[B, T, R]`` if ``batch_first``; 0 at
    padded steps), ``h_n [B, R]``, ``c_n [B, H]``, with ``R = P`` when ``w_hr [P, H]`` is given
    (``w_hh [4H, P]``, ``h0 [B, P]``), else ``R = H``. ``cache`` is for :func:`lstm_backward`.

    ``lengths [B]`` (ints in ``[0, T]``, any order): sequence ``b`` runs over steps ``s <
    lengths[b]``, at times ``s`` (or ``lengths[b] - 1 - s`` with ``reverse``). ``peephole [3,
    H]``: rows ``p_i, p_f, p_o``. ``clip``: the gate pre-activations are clamped to ``[-clip,
    clip]``. ``input_forget``: ``f = 1 - i``. ``layer_norm = (gain_x [4H], gain_h [4H], gain_c
    [H], bias_c [H])``. ``training`` draws the zoneout masks (else the expectation is used) and
    applies recurrent dropout; masks come from :func:`uniform` with ``seed`` and the streams
    ``stream_base + 0`` (zoneout on c), ``+ 1`` (zoneout on h), ``+ 2`` (recurrent dropout).
    ``int8`` (float32 inference, no layer norm): the products with ``w_ih`` and ``w_hh`` as the
    int8 step computes them (:func:`quantize_int8`), ``z = (b + x W_ih^T) + h W_hh^T``.
    """
    a, w_hh, h0 = _check_pass(x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_first, w_hr)
    x, w_ih, dt, batch_first = a.x, a.w_ih, a.x.dtype, bool(batch_first)
    if batch_first:
        x = x.swapaxes(0, 1)
    T, B, _ = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    w_hr = None if w_hr is None else _float_array("w_hr", w_hr, dt)
    if peephole is not None:
        peephole = _float_array("peephole", peephole, dt)
        _expect_shape("peephole", peephole, (3, H), "[3, H]")
    ln = _check_layer_norm(layer_norm, H, dt)
    lengths = _check_lengths(lengths, T, B)
    reverse, input_forget = _flag("reverse", reverse), _flag("input_forget", input_forget)
    training, clip = _flag("training", training), _check_clip(clip)
    p_zh, p_zc = _probability("zoneout_h", zoneout_h), _probability("zoneout_c", zoneout_c)
    p_rd = _probability("recurrent_dropout", recurrent_dropout, below_one=True)
    seed, stream_base = _uint("seed", seed), _uint("stream_base", stream_base, _U64 - 3)
    qih = qhh = None  # int8: (q, scale) of w_ih's and w_hh's rows
    if _flag("int8", int8):
        if dt != np.float32 or training or ln is not None:
            raise ValueError("int8: float32 inference without layer norm only")
        qih, qhh = quantize_int8(w_ih), quantize_int8(w_hh)

    # Zoneout: the weight of the previous state, a 0/1 mask per (step, b, unit) in training,
    # the probability itself in inference; None without zoneout.
    def zoneout(p: float, stream: int, n: int) -> AnyArray | float | None:
        if p == 0:
            return None
        return (uniform(seed, stream, T, B, n) < p).astype(dt) if training else p

    keep_c, keep_h = zoneout(p_zc, stream_base + 0, H), zoneout(p_zh, stream_base + 1, R)
    m_rd = None  # recurrent dropout [B, R], the same mask at every step
    if training and p_rd > 0:
        m_rd = ((uniform(seed, stream_base + 2, 1, B, R)[0] >= p_rd) / (1 - p_rd)).astype(dt)

    b = np.zeros(4 * H, dt) if a.bias is None else a.bias
    h = np.zeros((B, R), dt) if h0 is None else np.array(h0)  # [B, R]
    c = np.zeros((B, H), dt) if a.c0 is None else np.array(a.c0)  # [B, H]
    y = np.zeros((T, B, R), dt)
    steps = []
    for s in range(T):
        rows = np.flatnonzero(lengths > s)  # the sequences still running at step s
        t = lengths[rows] - 1 - s if reverse else np.full(rows.size, s)
        st: dict[str, Any] = dict(rows=rows, t=t, x=x[t, rows], h_prev=h[rows], c_prev=c[rows])
        st["hr"] = st["h_prev"] if m_rd is None else st["h_prev"] * m_rd[rows]  # [n, R]
        if qih is not None and qhh is not None:  # int8 (the kernels' order of the sums)
            z = (b + _int8_product(st["x"], *qih)) + _int8_product(st["hr"], *qhh)
        else:
            zx, zh = st["x"] @ w_ih.T, st["hr"] @ w_hh.T  # [n, 4H]
            if ln is None:
                z = zx + zh + b
            else:
                st["nx"], st["sx"] = _normalize(zx)
                st["nh"], st["sh"] = _normalize(zh)
                z = ln[0] * st["nx"] + ln[1] * st["nh"] + b
        zi, zf, zg, zo = (z[:, k * H:(k + 1) * H] for k in range(4))  # [n, H] each
        if peephole is not None:
            zi = zi + peephole[0] * st["c_prev"]
            zf = zf + peephole[1] * st["c_prev"]
        st["z"] = dict(i=zi, f=zf, g=zg)  # before clipping
        if clip is not None:
            zi, zf, zg = (np.clip(v, -clip, clip) for v in (zi, zf, zg))
        i, g = sigmoid(zi), np.tanh(zg)
        f = 1 - i if input_forget else sigmoid(zf)
        cn = f * st["c_prev"] + i * g
        if peephole is not None:
            zo = zo + peephole[2] * cn
        st["z"]["o"] = zo
        o = sigmoid(zo if clip is None else np.clip(zo, -clip, clip))
        if ln is None:
            q = cn
        else:
            st["nc"], st["sc"] = _normalize(cn)
            q = ln[2] * st["nc"] + ln[3]
        st.update(i=i, f=f, g=g, o=o, cn=cn, tq=np.tanh(q))
        st["r"] = o * st["tq"]  # [n, H]
        hn = st["r"] if w_hr is None else st["r"] @ w_hr.T  # [n, R]
        if keep_c is not None:
            st["keep_c"] = keep_c[s, rows] if isinstance(keep_c, np.ndarray) else keep_c
            cn = st["keep_c"] * st["c_prev"] + (1 - st["keep_c"]) * cn
        if keep_h is not None:
            st["keep_h"] = keep_h[s, rows] if isinstance(keep_h, np.ndarray) else keep_h
            hn = st["keep_h"] * st["h_prev"] + (1 - st["keep_h"]) * hn
        h[rows], c[rows], y[t, rows] = hn, cn, hn
        steps.append(st)
    cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, peephole=peephole, layer_norm=ln,
                 clip=clip, input_forget=input_forget, m_rd=m_rd, steps=steps, H=H,
                 batch_first=batch_first, has_bias=a.has_bias)
    return (y.swapaxes(0, 1) if batch_first else y), h, c, cache


_CACHE_KEYS = {"x", "w_ih", "w_hh", "w_hr", "peephole", "layer_norm", "clip", "input_forget",
               "m_rd", "steps", "H", "batch_first", "has_bias"}


def _check_cache(cache: Any, keys: set[str], source: str) -> None:
    if not (isinstance(cache, dict) and keys <= cache.keys()):
        raise TypeError(f"cache: expected the cache dict from {source}, got "
                        f"{type(cache).__name__}")


def lstm_backward(cache: dict[str, Any], dy: AnyArray | None, dh_n: AnyArray | None = None,
                  dc_n: AnyArray | None = None) -> dict[str, Any]:
    """Backpropagation through time, one step at a time with per-step outer products.

    ``dy [T, B, R]`` (``[B, T, R]`` if ``batch_first``; padded steps are ignored), ``dh_n [B,
    R]``, ``dc_n [B, H]``, each optional. Returns a dict with ``dx, dh0, dc0, dw_ih, dw_hh,
    db_ih, db_hh, dw_hr, dpeephole, dlayer_norm`` (the last a 4-tuple like ``layer_norm``);
    None where the forward pass had no such parameter.
    """
    _check_cache(cache, _CACHE_KEYS, "lstm_forward")
    x, w_ih, w_hh, w_hr = cache["x"], cache["w_ih"], cache["w_hh"], cache["w_hr"]
    peep, ln, clip, m_rd = cache["peephole"], cache["layer_norm"], cache["clip"], cache["m_rd"]
    T, B, _ = x.shape
    H, R, dt = cache["H"], w_hh.shape[1], x.dtype
    bf, rn = cache["batch_first"], "P" if w_hr is not None else "H"
    dy = _grad_array("dy", dy, (B, T, R) if bf else (T, B, R),
                     f"[B, T, {rn}]" if bf else f"[T, B, {rn}]", dt)
    dh_n = _grad_array("dh_n", dh_n, (B, R), f"[B, {rn}]", dt)
    dc_n = _grad_array("dc_n", dc_n, (B, H), "[B, H]", dt)
    if dy is not None and bf:
        dy = dy.swapaxes(0, 1)
    dx, dw_ih, dw_hh = np.zeros_like(x), np.zeros_like(w_ih), np.zeros_like(w_hh)
    db = np.zeros(4 * H, dt)
    dw_hr: Any = None if w_hr is None else np.zeros_like(w_hr)  # None or arrays
    dpeep: Any = None if peep is None else np.zeros_like(peep)
    dln: Any = None if ln is None else [np.zeros_like(g) for g in ln]
    dh = np.zeros((B, R), dt) if dh_n is None else dh_n.copy()  # d h_s, [B, R]
    dc = np.zeros((B, H), dt) if dc_n is None else dc_n.copy()  # d c_s, [B, H]
    for st in reversed(cache["steps"]):
        rows, t = st["rows"], st["t"]
        i, f, g, o, cn, tq = (st[k] for k in ("i", "f", "g", "o", "cn", "tq"))
        dhn, dcn = dh[rows], dc[rows]  # [n, R], [n, H]: of h_s, c_s so far
        if dy is not None:
            dhn = dhn + dy[t, rows]
        dh_prev, dc_prev = 0.0, 0.0  # of h_{s-1}, c_{s-1} (zoneout's direct path first)
        if "keep_h" in st:
            dh_prev, dhn = st["keep_h"] * dhn, (1 - st["keep_h"]) * dhn
        if "keep_c" in st:
            dc_prev, dcn = st["keep_c"] * dcn, (1 - st["keep_c"]) * dcn
        if w_hr is None:
            dr = dhn
        else:
            dw_hr += dhn.T @ st["r"]
            dr = dhn @ w_hr  # [n, H]
        do, dq = dr * tq, dr * o * (1 - tq**2)
        if ln is None:
            dcn = dcn + dq
        else:
            dln[2] += (dq * st["nc"]).sum(0)
            dln[3] += dq.sum(0)
            dcn = dcn + _normalize_backward(dq * ln[2], st["nc"], st["sc"])
        dzo = do * o * (1 - o) * _clip_pass(st["z"]["o"], clip)
        if peep is not None:
            dpeep[2] += (dzo * st["cn"]).sum(0)
            dcn = dcn + dzo * peep[2]
        di, dg, df = dcn * g, dcn * i, dcn * st["c_prev"]
        dc_prev = dc_prev + dcn * f
        if cache["input_forget"]:
            di, dzf = di - df, np.zeros_like(df)
        else:
            dzf = df * f * (1 - f) * _clip_pass(st["z"]["f"], clip)
        dzi = di * i * (1 - i) * _clip_pass(st["z"]["i"], clip)
        dzg = dg * (1 - g**2) * _clip_pass(st["z"]["g"], clip)
        if peep is not None:
            dpeep[0] += (dzi * st["c_prev"]).sum(0)
            dpeep[1] += (dzf * st["c_prev"]).sum(0)
            dc_prev = dc_prev + dzi * peep[0] + dzf * peep[1]
        dz = np.concatenate([dzi, dzf, dzg, dzo], axis=1)  # [n, 4H]
        db += dz.sum(0)
        if ln is None:
            dzx = dzh = dz
        else:
            dln[0] += (dz * st["nx"]).sum(0)
            dln[1] += (dz * st["nh"]).sum(0)
            dzx = _normalize_backward(dz * ln[0], st["nx"], st["sx"])
            dzh = _normalize_backward(dz * ln[1], st["nh"], st["sh"])
        dx[t, rows] = dzx @ w_ih
        dw_ih += dzx.T @ st["x"]
        dw_hh += dzh.T @ st["hr"]
        dhr = dzh @ w_hh  # [n, R]
        dh[rows] = dh_prev + (dhr if m_rd is None else dhr * m_rd[rows])
        dc[rows] = dc_prev
    if bf:
        dx = dx.swapaxes(0, 1)
    has_bias = cache["has_bias"]
    return dict(dx=dx, dh0=dh, dc0=dc, dw_ih=dw_ih, dw_hh=dw_hh,
                db_ih=db if has_bias else None, db_hh=db.copy() if has_bias else None,
                dw_hr=dw_hr, dpeephole=dpeep, dlayer_norm=None if dln is None else tuple(dln))


# ---- stacks: layers and directions in PyTorch's layout -------------------------------------

_LN_NAMES = ("ln_gain_ih", "ln_gain_hh", "ln_gain_c", "ln_bias_c")


def _pass_names(k: int, sfx: str, bias: bool, proj: bool, peephole: bool,
                layer_norm: bool) -> dict[str, Any]:
    """The parameter names of layer ``k``, direction suffix ``sfx``, by argument of
    :func:`lstm_forward` (``layer_norm``: a tuple of four names); only the features in use."""
    names: dict[str, Any] = dict(w_ih=f"weight_ih_l{k}{sfx}", w_hh=f"weight_hh_l{k}{sfx}")
    if bias:
        names.update(b_ih=f"bias_ih_l{k}{sfx}", b_hh=f"bias_hh_l{k}{sfx}")
    if proj:
        names["w_hr"] = f"weight_hr_l{k}{sfx}"
    if peephole:
        names["peephole"] = f"peephole_l{k}{sfx}"
    if layer_norm:
        names["layer_norm"] = tuple(f"{n}_l{k}{sfx}" for n in _LN_NAMES)
    return names


def _stack_params(params: Any, L: int, D: int, I: int, dt: np.dtype[Any]) -> tuple[
        dict[str, AnyArray], list[list[dict[str, Any]]], int, int]:
    """Checked parameters by name, the names of each pass (``[layer][direction]``), H and R.
    Biases, projection, peepholes and layer norm are on when layer 0's parameters are there;
    then every pass must have them, and no other name may appear."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of parameters by name, got "
                        f"{type(params).__name__}")
    on = [f"{n}_l0" in params for n in ("bias_ih", "weight_hr", "peephole", "ln_gain_ih")]
    names = [[_pass_names(k, sfx, *on) for sfx in ("", "_reverse")[:D]] for k in range(L)]
    expected = {n for layer in names for p in layer for v in p.values()
                for n in (v if isinstance(v, tuple) else (v,))}
    missing, unexpected = sorted(expected - params.keys()), sorted(params.keys() - expected)
    if missing or unexpected:
        what = [f"{k} {v}" for k, v in (("missing", missing), ("unexpected", unexpected)) if v]
        raise ValueError(f"params: {', '.join(what)} (num_layers = {L}, "
                         f"{'bidirectional' if D == 2 else 'one direction'})")
    p = {n: _float_array(f"params['{n}']", params[n], dt) for n in sorted(expected)}
    w_hh, w_hr = p["weight_hh_l0"], p.get("weight_hr_l0")
    if w_hh.ndim != 2 or w_hh.shape[0] % 4:
        raise ValueError(f"params['weight_hh_l0']: expected shape [4H, R], got {w_hh.shape}")
    H = w_hh.shape[0] // 4
    if w_hr is not None and w_hr.ndim != 2:
        raise ValueError(f"params['weight_hr_l0']: expected shape [P, H], got {w_hr.shape}")
    R = H if w_hr is None else w_hr.shape[0]
    shapes: dict[str, Any] = dict(  # by argument: (shape, description); w_ih's by layer
        w_hh=((4 * H, R), "[4H, R]"), b_ih=((4 * H,), "[4H]"), b_hh=((4 * H,), "[4H]"),
        w_hr=((R, H), "[P, H]"), peephole=((3, H), "[3, H]"),
        layer_norm=[((4 * H,), "[4H]"), ((4 * H,), "[4H]"), ((H,), "[H]"), ((H,), "[H]")])
    for k, layer in enumerate(names):
        shapes["w_ih"] = ((4 * H, I if k == 0 else D * R), "[4H, I]" if k == 0 else "[4H, D*R]")
        for pn in layer:
            for arg, n in pn.items():
                for nn, (shape, desc) in (zip(n, shapes[arg]) if arg == "layer_norm"
                                          else [(n, shapes[arg])]):
                    _expect_shape(f"params['{nn}']", p[nn], shape, desc)
    return p, names, H, R


def lstm_stack_forward(x: AnyArray, params: Mapping[str, AnyArray], *, num_layers: int = 1,
                       bidirectional: bool = False, batch_first: bool = False,
                       lengths: Any = None,
                       hx: tuple[AnyArray, AnyArray] | None = None, dropout: float = 0.0,
                       training: bool = False, seed: int = 0, reverse: bool = False,
                       clip: float | None = None, input_forget: bool = False,
                       zoneout_h: float = 0.0, zoneout_c: float = 0.0,
                       recurrent_dropout: float = 0.0, int8: bool = False) -> tuple[
                           AnyArray, tuple[AnyArray, AnyArray], dict[str, Any]]:
    """A stack of ``num_layers`` layers of one or two directions, like ``torch.nn.LSTM``.

    ``params`` maps PyTorch's names (``weight_ih_l{k}{sfx}``, ``weight_hh_l{k}{sfx}``,
    ``bias_ih_l{k}{sfx}``, ``bias_hh_l{k}{sfx}``, ``weight_hr_l{k}{sfx}``, with ``sfx`` "" or
    "_reverse") and lstmx's (``peephole_l{k}{sfx}``, ``ln_gain_ih_l{k}{sfx}``,
    ``ln_gain_hh_l{k}{sfx}``, ``ln_gain_c_l{k}{sfx}``, ``ln_bias_c_l{k}{sfx}``) to arrays; a
    feature is on when its parameters are there. ``hx = (h0 [L*D, B, R], c0 [L*D, B, H])`` or
    None. Returns ``(y, (h_n, c_n), cache)``, ``y [T, B, D*R]`` (``[B, T, D*R]`` if
    ``batch_first``). Layer ``l``, direction ``d`` is one :func:`lstm_forward` pass with
    ``stream_base = 8 * (2l + d)``; the reverse direction runs with ``reverse=True``. In
    training, ``dropout`` drops the output of every layer but the last (stream ``16l + 3``).
    ``int8``: every pass's products as :func:`lstm_forward`'s with ``int8``.
    """
    L = _uint("num_layers", num_layers, 1 << 31)
    if L == 0:
        raise ValueError("num_layers: expected a positive int, got 0")
    bidirectional, batch_first = _flag("bidirectional", bidirectional), _flag("batch_first",
                                                                              batch_first)
    training, reverse = _flag("training", training), _flag("reverse", reverse)
    if reverse and bidirectional:
        raise ValueError("reverse: a bidirectional stack already runs both ways; reverse=True "
                         "needs bidirectional=False")
    p_drop, seed = _probability("dropout", dropout), _uint("seed", seed)
    D = 2 if bidirectional else 1
    dt, src = _call_dtype(("x", x))
    x = _float_array("x", x, dt, src)
    if x.ndim != 3:
        raise ValueError(f"x: expected a 3-D array {'[B, T, I]' if batch_first else '[T, B, I]'}"
                         f", got shape {x.shape}")
    if batch_first:
        x = x.swapaxes(0, 1)
    T, B, I = x.shape
    p, names, H, R = _stack_params(params, L, D, I, dt)
    states: list[dict[str, Any]] = [{}] * (L * D)  # h0, c0 of each pass
    if hx is not None:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx: expected None or a tuple (h0, c0), got {type(hx).__name__}")
        h0, c0 = (_float_array(f"hx[{k}]", v, dt, src) for k, v in enumerate(hx))
        _expect_shape("hx[0]", h0, (L * D, B, R), "[L*D, B, R]")
        _expect_shape("hx[1]", c0, (L * D, B, H), "[L*D, B, H]")
        states = [dict(h0=h, c0=c) for h, c in zip(h0, c0)]
    opts: dict[str, Any] = dict(lengths=lengths, clip=clip, input_forget=input_forget,
                                zoneout_h=zoneout_h, zoneout_c=zoneout_c,
                                recurrent_dropout=recurrent_dropout, training=training, seed=seed,
                                int8=int8)
    inp, passes, masks, h_n, c_n = x, [], [], [], []
    for k in range(L):
        outs, caches = [], []
        for d in range(D):
            args: dict[str, Any] = {arg: tuple(p[m] for m in n) if isinstance(n, tuple)
                                    else p[n] for arg, n in names[k][d].items()}
            y, hn, cn, cache = lstm_forward(inp, **args, **states[k * D + d], **opts,
                                            reverse=reverse or d == 1,
                                            stream_base=8 * (2 * k + d))
            outs.append(y)
            caches.append(cache)
            h_n.append(hn)
            c_n.append(cn)
        inp = np.concatenate(outs, axis=2)  # [T, B, D*R]
        mask = None  # between-layer dropout, scaled: [T, B, D*R]
        if training and p_drop > 0 and k < L - 1:
            keep = uniform(seed, 16 * k + 3, T, B, D * R) >= p_drop
            mask = (keep / (1 - p_drop) if p_drop < 1 else np.zeros(keep.shape)).astype(dt)
            inp = inp * mask
        passes.append(caches)
        masks.append(mask)
    cache = dict(passes=passes, masks=masks, names=names, batch_first=batch_first, H=H, R=R)
    y = inp.swapaxes(0, 1) if batch_first else inp
    return y, (np.stack(h_n), np.stack(c_n)), cache


_STACK_CACHE_KEYS = {"passes", "masks", "names", "batch_first", "H", "R"}


def lstm_stack_backward(cache: dict[str, Any], dy: AnyArray | None,
                        dh_n: AnyArray | None = None,
                        dc_n: AnyArray | None = None) -> tuple[
                            AnyArray, tuple[AnyArray, AnyArray], dict[str, AnyArray]]:
    """Backward of :func:`lstm_stack_forward`: ``dy`` like ``y``, ``dh_n [L*D, B, R]``,
    ``dc_n [L*D, B, H]``, each optional. Returns ``(dx, (dh0, dc0), grads)``, ``grads`` by
    parameter name."""
    _check_cache(cache, _STACK_CACHE_KEYS, "lstm_stack_forward")
    passes, H, R, bf = cache["passes"], cache["H"], cache["R"], cache["batch_first"]
    L, D = len(passes), len(passes[0])
    x = passes[0][0]["x"]
    T, B, _ = x.shape
    dy = _grad_array("dy", dy, (B, T, D * R) if bf else (T, B, D * R),
                     "[B, T, D*R]" if bf else "[T, B, D*R]", x.dtype)
    dh_n = _grad_array("dh_n", dh_n, (L * D, B, R), "[L*D, B, R]", x.dtype)
    dc_n = _grad_array("dc_n", dc_n, (L * D, B, H), "[L*D, B, H]", x.dtype)
    d_out = np.zeros((T, B, D * R), x.dtype) if dy is None else dy.swapaxes(0, 1) if bf else dy
    dh0, dc0 = np.zeros((L * D, B, R), x.dtype), np.zeros((L * D, B, H), x.dtype)
    grads: dict[str, AnyArray] = {}
    for k in reversed(range(L)):
        if cache["masks"][k] is not None:
            d_out = d_out * cache["masks"][k]
        d_in: Any = 0.0
        for d in range(D):
            j = k * D + d
            g = lstm_backward(passes[k][d], d_out[..., d * R:(d + 1) * R],
                              None if dh_n is None else dh_n[j], None if dc_n is None else dc_n[j])
            d_in = d_in + g["dx"]
            dh0[j], dc0[j] = g["dh0"], g["dc0"]
            for arg, n in cache["names"][k][d].items():
                grads.update(zip(n, g["d" + arg]) if isinstance(n, tuple) else [(n, g["d" + arg])])
        d_out = d_in
    return (d_out.swapaxes(0, 1) if bf else d_out), (dh0, dc0), grads


# ---- the seeds' formulation ------------------------------------------------------------------


def _seed_params(p: Mapping[str, Any]) -> dict[str, AnyArray]:
    """Checked per-gate parameters: ``W_k [H + I, H]`` and ``b_k [H]``, one dtype."""
    keys = [f"{w}_{g}" for w in "Wb" for g in GATES]
    if not isinstance(p, Mapping) or any(k not in p for k in keys):
        raise TypeError(f"p: expected a mapping with the keys {', '.join(keys)}")
    w = _float_array("p['W_i']", p["W_i"])
    if w.ndim != 2 or w.shape[0] < w.shape[1]:
        raise ValueError(f"p['W_i']: expected shape [H + I, H], got {w.shape}")
    out = {k: _float_array(f"p['{k}']", p[k], w.dtype, "p['W_i']") for k in keys}
    for k in keys:
        _expect_shape(f"p['{k}']", out[k], w.shape if k[0] == "W" else w.shape[1:],
                      "[H + I, H]" if k[0] == "W" else "[H]")
    return out


def to_seed_params(w_ih: AnyArray, w_hh: AnyArray, b_ih: AnyArray | None = None,
                   b_hh: AnyArray | None = None) -> dict[str, AnyArray]:
    """lstmx/PyTorch layout to per-gate ``W_k [H + I, H]`` applied to ``[h_{t-1}, x_t]``."""
    dt, src = _call_dtype(("w_ih", w_ih), ("w_hh", w_hh))
    w_ih, w_hh = _float_array("w_ih", w_ih, dt, src), _float_array("w_hh", w_hh, dt, src)
    if w_ih.ndim != 2:
        raise ValueError(f"w_ih: expected shape [4H, I], got {w_ih.shape}")
    H = _check_weights(w_ih, w_hh, w_ih.shape[1])
    b: AnyArray = np.zeros(4 * H, w_ih.dtype)
    for name, bb in (("b_ih", b_ih), ("b_hh", b_hh)):
        if bb is not None:
            bb = _float_array(name, bb, dt, src)
            _expect_shape(name, bb, (4 * H,), "[4H]")
            b = b + bb
    p = {}
    for k, name in enumerate(GATES):
        rows = slice(k * H, (k + 1) * H)
        p[f"W_{name}"] = np.concatenate([w_hh[rows].T, w_ih[rows].T], axis=0)
        p[f"b_{name}"] = b[rows].copy()
    return p


def from_seed_params(p: dict[str, AnyArray]) -> tuple[AnyArray, AnyArray, AnyArray,
                                                         AnyArray]:
    """Per-gate seed layout back to ``(w_ih, w_hh, b_ih, b_hh)``; ``b_hh`` is zero."""
    p = _seed_params(p)
    H = p["W_i"].shape[1]
    w_hh = np.concatenate([p[f"W_{n}"][:H].T for n in GATES], axis=0)
    w_ih = np.concatenate([p[f"W_{n}"][H:].T for n in GATES], axis=0)
    b_ih = np.concatenate([p[f"b_{n}"] for n in GATES])
    return w_ih, w_hh, b_ih, np.zeros_like(b_ih)


def seed_lstm_forward(x: AnyArray, p: dict[str, AnyArray], h0: AnyArray | None = None,
                      c0: AnyArray | None = None) -> tuple[AnyArray, AnyArray, AnyArray]:
    """The seeds' own computation, literally: per-gate weights on ``[h_{t-1}, x_t]``.

    ``x [T, B, I]``; returns ``(y, h_n, c_n)``.
    """
    p = _seed_params(p)
    H, dt = p["W_i"].shape[1], p["W_i"].dtype
    I = p["W_i"].shape[0] - H
    x = _float_array("x", x, dt, "p")
    if x.ndim != 3 or x.shape[2] != I:
        raise ValueError(f"x: expected shape [T, B, I] with I = {I} (from p), got {x.shape}")
    T, B, _ = x.shape
    _check_memory("x", T * B * (I + 6 * H) * dt.itemsize, f"T*B = {T * B} rows with H = {H}")
    h, c = (np.zeros((B, H), dt) if s is None else _float_array(n, s, dt, "p")
            for n, s in (("h0", h0), ("c0", c0)))
    _expect_shape("h0", h, (B, H), "[B, H]")
    _expect_shape("c0", c, (B, H), "[B, H]")
    ys = []
    for t in range(T):
        concat = np.concatenate([h, x[t]], axis=1)
        i_t = sigmoid(concat @ p["W_i"] + p["b_i"])
        f_t = sigmoid(concat @ p["W_f"] + p["b_f"])
        c_tilde = np.tanh(concat @ p["W_g"] + p["b_g"])
        o_t = sigmoid(concat @ p["W_o"] + p["b_o"])
        c = f_t * c + i_t * c_tilde
        h = o_t * np.tanh(c)
        ys.append(h)
    y = np.stack(ys) if T else np.zeros((0, B, H), x.dtype)
    return y, h, c
