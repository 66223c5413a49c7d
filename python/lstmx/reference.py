"""Plain NumPy LSTM: the oracle every lstmx result is tested against.

Written from the seed equations (``../shared/seeds``), one step at a time, for clarity only:

    i_t = sigmoid(W_i [h_{t-1}, x_t] + b_i)       input gate
    f_t = sigmoid(W_f [h_{t-1}, x_t] + b_f)       forget gate
    g_t = tanh   (W_g [h_{t-1}, x_t] + b_g)       candidate memory (C~)
    o_t = sigmoid(W_o [h_{t-1}, x_t] + b_o)       output gate
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

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
from .functional import (_call_dtype, _check_args, _check_memory, _check_weights, _expect_shape,
                         _float_array, _grad_array)

GATES = ("i", "f", "g", "o")


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, without overflow for any input (float32 or float64)."""
    z = _float_array("z", z)
    _check_memory("z", 4 * z.nbytes, f"the sigmoid of {z.size} numbers")
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def lstm_forward(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray,
                 b_ih: np.ndarray | None = None, b_hh: np.ndarray | None = None,
                 h0: np.ndarray | None = None, c0: np.ndarray | None = None,
                 batch_first: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Returns ``(y, h_n, c_n, cache)``; shapes as in :mod:`lstmx.functional`."""
    a = _check_args(x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_first, training=True)
    x, w_ih, w_hh, batch_first = a.x, a.w_ih, a.w_hh, bool(batch_first)
    if batch_first:
        x = x.swapaxes(0, 1)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    b = np.zeros(4 * H, x.dtype) if a.bias is None else a.bias
    h = np.zeros((B, H), x.dtype) if a.h0 is None else a.h0
    c = np.zeros((B, H), x.dtype) if a.c0 is None else a.c0
    hs, cs, gates = [h], [c], []
    for t in range(T):
        z = x[t] @ w_ih.T + h @ w_hh.T + b
        i = sigmoid(z[:, 0 * H:1 * H])
        f = sigmoid(z[:, 1 * H:2 * H])
        g = np.tanh(z[:, 2 * H:3 * H])
        o = sigmoid(z[:, 3 * H:4 * H])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
        cs.append(c)
        gates.append((i, f, g, o))
    y = np.stack(hs[1:]) if T else np.zeros((0, B, H), x.dtype)
    cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, hs=hs, cs=cs, gates=gates,
                 batch_first=batch_first, has_bias=a.has_bias)
    return (y.swapaxes(0, 1) if batch_first else y), h, c, cache


def lstm_backward(cache: dict, dy: np.ndarray | None, dh_n: np.ndarray | None = None,
                  dc_n: np.ndarray | None = None) -> dict[str, Any]:
    """Backpropagation through time, one step at a time with per-step outer products.

    Returns a dict with ``dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh``.
    """
    if not (isinstance(cache, dict) and _CACHE_KEYS <= cache.keys()):
        raise TypeError(f"cache: expected the cache dict from lstm_forward, got "
                        f"{type(cache).__name__}")
    x, w_ih, w_hh = cache["x"], cache["w_ih"], cache["w_hh"]
    hs, cs, gates = cache["hs"], cache["cs"], cache["gates"]
    T, B, _ = x.shape
    H = w_hh.shape[1]
    bf = cache["batch_first"]
    dy = _grad_array("dy", dy, (B, T, H) if bf else (T, B, H), "[B, T, H]" if bf else "[T, B, H]",
                     x.dtype)
    dh_n = _grad_array("dh_n", dh_n, (B, H), "[B, H]", x.dtype)
    dc_n = _grad_array("dc_n", dc_n, (B, H), "[B, H]", x.dtype)
    if dy is not None and bf:
        dy = dy.swapaxes(0, 1)
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db = np.zeros(4 * H, x.dtype)
    dh = np.zeros((B, H), x.dtype) if dh_n is None else dh_n.copy()
    dc = np.zeros((B, H), x.dtype) if dc_n is None else dc_n.copy()
    for t in reversed(range(T)):
        i, f, g, o = gates[t]
        if dy is not None:
            dh = dh + dy[t]
        tc = np.tanh(cs[t + 1])
        do = dh * tc
        dc = dc + dh * o * (1 - tc**2)
        di, df, dg = dc * g, dc * cs[t], dc * i
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2),
                             do * o * (1 - o)], axis=1)
        dx[t] = dz @ w_ih
        dw_ih += dz.T @ x[t]
        dw_hh += dz.T @ hs[t]
        db += dz.sum(0)
        dh = dz @ w_hh
        dc = dc * f
    if cache["batch_first"]:
        dx = dx.swapaxes(0, 1)
    has_bias = cache["has_bias"]
    return dict(dx=dx, dh0=dh, dc0=dc, dw_ih=dw_ih, dw_hh=dw_hh,
                db_ih=db if has_bias else None, db_hh=db.copy() if has_bias else None)


_CACHE_KEYS = {"x", "w_ih", "w_hh", "hs", "cs", "gates", "batch_first", "has_bias"}


# ---- the seeds' formulation ------------------------------------------------------------------


def _seed_params(p: Mapping[str, Any]) -> dict[str, np.ndarray]:
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


def to_seed_params(w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray | None = None,
                   b_hh: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """lstmx/PyTorch layout to per-gate ``W_k [H + I, H]`` applied to ``[h_{t-1}, x_t]``."""
    dt, src = _call_dtype(("w_ih", w_ih), ("w_hh", w_hh))
    w_ih, w_hh = _float_array("w_ih", w_ih, dt, src), _float_array("w_hh", w_hh, dt, src)
    if w_ih.ndim != 2:
        raise ValueError(f"w_ih: expected shape [4H, I], got {w_ih.shape}")
    H = _check_weights(w_ih, w_hh, w_ih.shape[1])
    b = np.zeros(4 * H, w_ih.dtype)
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


def from_seed_params(p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         np.ndarray]:
    """Per-gate seed layout back to ``(w_ih, w_hh, b_ih, b_hh)``; ``b_hh`` is zero."""
    p = _seed_params(p)
    H = p["W_i"].shape[1]
    w_hh = np.concatenate([p[f"W_{n}"][:H].T for n in GATES], axis=0)
    w_ih = np.concatenate([p[f"W_{n}"][H:].T for n in GATES], axis=0)
    b_ih = np.concatenate([p[f"b_{n}"] for n in GATES])
    return w_ih, w_hh, b_ih, np.zeros_like(b_ih)


def seed_lstm_forward(x: np.ndarray, p: dict[str, np.ndarray], h0: np.ndarray | None = None,
                      c0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
