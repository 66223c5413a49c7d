"""lstmx.LSTM: parameters, state_dict, PyTorch's call convention and shapes."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from conftest import DTYPES, assert_close, numerical_grads

import lstmx
from lstmx import reference as R

NAMES = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]


def test_parameters_named_shaped_and_initialised_like_pytorch() -> None:
    m = lstmx.LSTM(10, 20, seed=0)
    p = m.named_parameters()
    assert list(p) == NAMES
    assert p["weight_ih_l0"].shape == (80, 10) and p["weight_hh_l0"].shape == (80, 20)
    assert p["bias_ih_l0"].shape == (80,) and p["bias_hh_l0"].shape == (80,)
    k = 1 / np.sqrt(20)
    for a in p.values():
        assert a.dtype == np.float32 and np.abs(a).max() <= k and np.abs(a).max() > 0.8 * k
    assert list(lstmx.LSTM(3, 4, bias=False).named_parameters()) == NAMES[:2]
    np.testing.assert_array_equal(lstmx.LSTM(3, 4, seed=1).weight_hh_l0,
                                  lstmx.LSTM(3, 4, seed=1).weight_hh_l0)
    assert repr(lstmx.LSTM(3, 4, bias=False, batch_first=True)) == \
        "LSTM(3, 4, bias=False, batch_first=True)"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_call_matches_functional(dtype: Any, batch_first: bool) -> None:
    m = lstmx.LSTM(5, 6, batch_first=batch_first, dtype=dtype, seed=3)
    rng = np.random.default_rng(0)
    T, B = 7, 3
    x = rng.standard_normal((B, T, 5) if batch_first else (T, B, 5)).astype(dtype)
    h0, c0 = rng.standard_normal((2, 1, B, 6)).astype(dtype)
    y, (hn, cn) = m(x, (h0, c0))
    assert y.shape == x.shape[:2] + (6,) and hn.shape == (1, B, 6) and cn.shape == (1, B, 6)
    yr, hr, cr, _ = R.lstm_forward(x.astype(np.float64),
                                   *(a.astype(np.float64) for a in m.named_parameters().values()),
                                   h0[0].astype(np.float64), c0[0].astype(np.float64),
                                   batch_first=batch_first)
    assert_close(y, yr, dtype)
    assert_close(hn[0], hr, dtype)
    assert_close(cn[0], cr, dtype)
    y2, _ = m.forward(x)
    assert y2.shape == y.shape


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input(batch_first: bool) -> None:
    m = lstmx.LSTM(4, 3, batch_first=batch_first, dtype=np.float64, seed=1)
    x = np.random.default_rng(0).standard_normal((6, 4))
    y, (hn, cn) = m(x)
    assert y.shape == (6, 3) and hn.shape == (1, 3)
    yb, (hb, _) = m(x[None] if batch_first else x[:, None])
    np.testing.assert_array_equal(y, yb[0] if batch_first else yb[:, 0])
    y, (hn, cn), tape = m.forward_train(x, (hn, cn))
    dx, (dh0, dc0), grads = m.backward(tape, np.ones_like(y), np.ones_like(hn))
    assert dx.shape == x.shape and dh0.shape == (1, 3) and set(grads) == set(NAMES)


@pytest.mark.parametrize("bias", [True, False])
def test_train_and_backward(bias: bool) -> None:
    m = lstmx.LSTM(4, 5, bias=bias, dtype=np.float64, seed=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2, 4))
    h0, c0 = rng.standard_normal((2, 1, 2, 5))
    y, (hn, cn), tape = m.forward_train(x, (h0, c0))
    dy, dh, dc = rng.standard_normal(y.shape), rng.standard_normal(hn.shape), \
        rng.standard_normal(cn.shape)
    dx, (dh0, dc0), grads = m.backward(tape, dy, dh, dc)
    params = list(m.named_parameters().values()) + ([None, None] if not bias else [])
    _, _, _, cache = R.lstm_forward(x, *params, h0[0], c0[0])
    gr = R.lstm_backward(cache, dy, dh[0], dc[0])
    assert_close(dx, gr["dx"], np.float64)
    assert_close(dh0[0], gr["dh0"], np.float64)
    assert_close(dc0[0], gr["dc0"], np.float64)
    assert list(grads) == NAMES[: 4 if bias else 2]
    for name, key in zip(NAMES, ["dw_ih", "dw_hh", "db_ih", "db_hh"]):
        if name in grads:
            assert_close(grads[name], gr[key], np.float64, name)


def test_state_dict_round_trip_and_errors() -> None:
    a, b = lstmx.LSTM(3, 4, seed=1), lstmx.LSTM(3, 4, seed=2)
    sd = a.state_dict()
    sd["weight_ih_l0"][...] = 0  # a copy: the layer is unchanged
    assert np.any(a.weight_ih_l0)
    live = b.named_parameters()
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(live["weight_hh_l0"], a.weight_hh_l0)  # loaded in place
    for k in NAMES:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    c = lstmx.LSTM(3, 4, dtype=np.float64)
    c.load_state_dict({k: v.tolist() for k, v in a.state_dict().items()})  # any array-like
    assert c.weight_hh_l0.dtype == np.float64
    with pytest.raises(ValueError, match="state: missing keys.*bias_hh_l0"):
        b.load_state_dict({k: v for k, v in sd.items() if k != "bias_hh_l0"})
    before = b.state_dict()
    bad = dict(a.state_dict(), weight_hh_l0=np.zeros((16, 5)))
    with pytest.raises(ValueError, match=r"weight_hh_l0: expected shape \(16, 4\), got \(16, 5\)"):
        b.load_state_dict(bad)
    for k in NAMES:  # a failed load changes nothing
        np.testing.assert_array_equal(getattr(b, k), before[k])
    with pytest.raises(TypeError, match="weight_ih_l0"):
        b.load_state_dict(dict(a.state_dict(), weight_ih_l0=np.zeros((16, 3), complex)))
    with pytest.raises(TypeError, match="mapping"):
        b.load_state_dict([1, 2])  # type: ignore[arg-type]


def test_layer_pickles() -> None:
    m = lstmx.LSTM(3, 4, seed=5)
    m2 = pickle.loads(pickle.dumps(m))
    x = np.ones((2, 1, 3), np.float32)
    np.testing.assert_array_equal(m(x)[0], m2(x)[0])


def test_layer_bad_arguments() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        lstmx.LSTM(3, 0)
    with pytest.raises(ValueError, match="input_size"):
        lstmx.LSTM(-1, 3)
    with pytest.raises(TypeError, match="dtype"):
        lstmx.LSTM(3, 4, dtype=np.int32)
    with pytest.raises(NotImplementedError):
        lstmx.LSTM(3, 4, num_layers=2)
    m = lstmx.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"x: expected 3 input features.*\(5, 2, 2\)"):
        m(np.zeros((5, 2, 2), np.float32))
    with pytest.raises(TypeError, match="x: dtype float64 does not match"):
        m(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match=r"h0: expected shape .* = \(1, 2, 4\), got \(2, 4\)"):
        m(np.zeros((5, 2, 3), np.float32), (np.zeros((2, 4), np.float32),) * 2)
    with pytest.raises(TypeError, match="hx"):
        m(np.zeros((5, 2, 3), np.float32), np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="x: expected a 3-D array"):
        m(np.zeros(3, np.float32))
    y, _, tape = m.forward_train(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy: expected the shape of y, \(5, 2, 4\)"):
        m.backward(tape, np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"dh_n: expected the shape of h_n"):
        m.backward(tape, None, np.zeros((2, 4), np.float32))
    _, _, _, other = lstmx.lstm_train(np.zeros((2, 5, 3), np.float32), *m._weights(),
                                      batch_first=True)
    with pytest.raises(ValueError, match="tape: it was not made by this layer"):
        m.backward(other, None)


# Every variant of the layer; a new one (num_layers, bidirectional, proj_size) is a new line.
VARIANTS = [
    dict(),
    dict(bias=False),
    dict(batch_first=True),
    dict(unbatched=True),
    dict(batch_first=True, unbatched=True, bias=False),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(v) or "default")
def test_gradient_check_every_variant(variant: dict[str, bool]) -> None:
    """backward against central differences of the layer's own forward, in float64: the
    gradients of x, the initial state and every parameter."""
    kw = {k: v for k, v in variant.items() if k != "unbatched"}
    m = lstmx.LSTM(3, 4, dtype=np.float64, seed=7, **kw)
    rng = np.random.default_rng(8)
    T, B = 3, 2
    shape = (T, 3) if variant.get("unbatched") else (B, T, 3) if m.batch_first else (T, B, 3)
    sshape = (1, 4) if variant.get("unbatched") else (1, B, 4)
    x, h0, c0 = rng.standard_normal(shape), rng.standard_normal(sshape), \
        rng.standard_normal(sshape)
    y, (hn, cn), tape = m.forward_train(x, (h0, c0))
    wy, wh, wc = (rng.standard_normal(a.shape) for a in (y, hn, cn))

    def loss() -> float:
        y, (hn, cn) = m(x, (h0, c0))
        return float((y * wy).sum() + (hn * wh).sum() + (cn * wc).sum())

    dx, (dh0, dc0), grads = m.backward(tape, wy, wh, wc)
    num = numerical_grads(loss, dict(x=x, h0=h0, c0=c0, **m.named_parameters()))
    for k, g in dict(x=dx, h0=dh0, c0=dc0, **grads).items():
        np.testing.assert_allclose(g, num[k], rtol=1e-6, atol=1e-8, err_msg=k)
