"""The oracle itself: the NumPy reference against the seeds' formulation and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GRAD_NAMES, numerical_grads, make_case

from lstmx import reference as R


def test_seed_formulation_matches_reference() -> None:
    c = make_case(T=6, B=3, I=4, H=5)
    p = R.to_seed_params(c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"])
    assert p["W_i"].shape == (5 + 4, 5) and p["b_g"].shape == (5,)
    ys, hs, cs = R.seed_lstm_forward(c["x"], p, c["h0"], c["c0"])
    y, h, cc, _ = R.lstm_forward(**c)
    np.testing.assert_allclose(ys, y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(hs, h, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(cs, cc, rtol=1e-13, atol=1e-13)


def test_seed_converter_round_trip() -> None:
    c = make_case(T=2, B=2, I=3, H=4)
    w_ih, w_hh, b_ih, b_hh = R.from_seed_params(R.to_seed_params(c["w_ih"], c["w_hh"], c["b_ih"],
                                                                 c["b_hh"]))
    np.testing.assert_array_equal(w_ih, c["w_ih"])
    np.testing.assert_array_equal(w_hh, c["w_hh"])
    np.testing.assert_allclose(b_ih + b_hh, c["b_ih"] + c["b_hh"], rtol=0, atol=1e-15)


def test_seed_example_by_hand() -> None:
    """Seed 000's example, one step, H = 2, I = 2: per-gate weights on [h_{t-1}, x_t]."""
    rng = np.random.default_rng(1)
    x_t, h_prev = np.array([0.6, -0.3]), np.array([0.1, 0.5])
    p = {f"W_{g}": rng.standard_normal((4, 2)) for g in R.GATES}
    p.update({f"b_{g}": rng.standard_normal(2) for g in R.GATES})
    concat = np.concatenate((h_prev, x_t))
    i_t = 1 / (1 + np.exp(-(concat @ p["W_i"] + p["b_i"])))
    c_tilde = np.tanh(concat @ p["W_g"] + p["b_g"])
    f_t = 1 / (1 + np.exp(-(concat @ p["W_f"] + p["b_f"])))
    o_t = 1 / (1 + np.exp(-(concat @ p["W_o"] + p["b_o"])))
    c_t = f_t * 0.0 + i_t * c_tilde
    y, _, c, _ = R.lstm_forward(x_t[None, None], *R.from_seed_params(p), h0=h_prev[None])
    np.testing.assert_allclose(c[0], c_t, rtol=1e-14)
    np.testing.assert_allclose(y[0, 0], o_t * np.tanh(c_t), rtol=1e-14)


def test_sigmoid_is_stable() -> None:
    z = np.array([-1e4, -50.0, 0.0, 50.0, 1e4, np.nan])
    s = R.sigmoid(z)  # warnings are errors in this suite: no overflow warning may appear
    np.testing.assert_allclose(s[:5], [0.0, 1.9287498479639178e-22, 0.5, 1.0, 1.0], rtol=1e-12)
    assert np.isnan(s[5])


@pytest.mark.parametrize("batch_first", [False, True])
def test_reference_backward_matches_finite_differences(batch_first: bool) -> None:
    c = make_case(T=3, B=2, I=2, H=3, batch_first=batch_first)
    rng = np.random.default_rng(7)
    y, h, cc, _ = R.lstm_forward(**c, batch_first=batch_first)
    wy, wh, wc = (rng.standard_normal(a.shape) for a in (y, h, cc))

    def loss() -> float:
        y, h, cc, _ = R.lstm_forward(**c, batch_first=batch_first)
        return float((y * wy).sum() + (h * wh).sum() + (cc * wc).sum())

    _, _, _, cache = R.lstm_forward(**c, batch_first=batch_first)
    g = R.lstm_backward(cache, wy, wh, wc)
    num = numerical_grads(loss, c)
    for k, gk in GRAD_NAMES.items():
        np.testing.assert_allclose(g[gk], num[k], rtol=1e-6, atol=1e-8, err_msg=k)
