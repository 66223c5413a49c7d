"""lstmx.LSTM.step: online inference one step at a time equals the full-sequence call."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import lstmx

VARIANTS: list[dict[str, Any]] = [
    {},
    dict(num_layers=3),
    dict(num_layers=2, proj_size=3, peephole=True, clip=0.7),
    dict(layer_norm=True, input_forget=True, zoneout_h=0.3, zoneout_c=0.2, num_layers=2),
    dict(bias=False, forget_bias=None, peephole=True),
    dict(dropout=0.5, recurrent_dropout=0.3, num_layers=2),  # training only: no effect here
]


def _tol(dtype: Any) -> float:
    return 1e-6 if np.dtype(dtype) == np.float32 else 1e-12


def _stepped(m: lstmx.LSTM, x: np.ndarray, state: Any = None) -> tuple[np.ndarray, Any]:
    ys = []
    for t in range(x.shape[0]):
        y, state = m.step(x[t], state)
        ys.append(y)
    return np.stack(ys), state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", VARIANTS)
def test_step_equals_sequence(kw: dict[str, Any], dtype: Any) -> None:
    m = lstmx.LSTM(4, 5, dtype=dtype, seed=1, **kw)
    x = np.random.default_rng(0).standard_normal((7, 3, 4)).astype(dtype)
    y, (h_n, c_n) = m(x)
    ys, state = _stepped(m, x, m.initial_state(3))
    tol = _tol(dtype)
    assert isinstance(state, lstmx.StreamState) and state.h.dtype == dtype
    np.testing.assert_allclose(ys, y, rtol=0, atol=tol)
    np.testing.assert_allclose(state.h, h_n, rtol=0, atol=tol)
    np.testing.assert_allclose(state.c, c_n, rtol=0, atol=tol)


def test_state_none_and_handover() -> None:
    """None is the zero state; the full call's (h_n, c_n) seeds the steps and back."""
    m = lstmx.LSTM(3, 6, num_layers=2, proj_size=2, seed=2)
    x = np.random.default_rng(1).standard_normal((6, 2, 3)).astype(np.float32)
    y, (h_n, c_n) = m(x)
    y1, s1 = m.step(x[0])
    y2, s2 = m.step(x[0], m.initial_state(2))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(s1.h, s2.h)
    y_a, hx = m(x[:3])
    ys, state = _stepped(m, x[3:], hx)  # a plain tuple (h_n, c_n) as the state
    np.testing.assert_allclose(ys, y[3:], rtol=0, atol=1e-6)
    y_b, (h_b, c_b) = m(x[5:], tuple(_stepped(m, x[3:5], hx)[1]))
    np.testing.assert_allclose(y_b, y[5:], rtol=0, atol=1e-6)
    np.testing.assert_allclose(c_b, c_n, rtol=0, atol=1e-6)
    assert state.h.shape == (2, 2, 2) and state.c.shape == (2, 2, 6)


def test_list_input_and_batch_zero() -> None:
    m = lstmx.LSTM(2, 3, dtype=np.float64, seed=0)
    y, state = m.step([[0.5, -1.0]])
    y2, _ = m.step(np.array([[0.5, -1.0]]))
    np.testing.assert_array_equal(y, y2)
    y0, s0 = m.step(np.zeros((0, 2)), m.initial_state(0))
    assert y0.shape == (0, 3) and s0.h.shape == (1, 0, 3)


def test_parameters_read_at_call_time() -> None:
    """In-place updates (load_state_dict) and replaced arrays both reach the next step."""
    m = lstmx.LSTM(3, 4, num_layers=2, seed=0)
    other = lstmx.LSTM(3, 4, num_layers=2, seed=5)
    x = np.random.default_rng(2).standard_normal((1, 3)).astype(np.float32)
    m.step(x)  # caches the arguments
    m.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(m.step(x)[0], other.step(x)[0])
    m.weight_hh_l1 = np.asfortranarray(m.weight_hh_l1 * 2)  # replaced, and not C-contiguous
    other.weight_hh_l1 *= 2
    np.testing.assert_array_equal(m.step(x)[0], other.step(x)[0])
    np.testing.assert_array_equal(m.step(x)[0], m(x[None])[0][0])


@pytest.mark.parametrize("kw, what", [(dict(bidirectional=True), "bidirectional"),
                                      (dict(reverse=True), "reverse")])
def test_no_future(kw: dict[str, Any], what: str) -> None:
    m = lstmx.LSTM(2, 3, **kw)
    with pytest.raises(ValueError, match=f"step: not with {what}=True"):
        m.step(np.zeros((1, 2), np.float32))


def test_bad_arguments() -> None:
    m = lstmx.LSTM(2, 3, num_layers=2)
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"x: expected one step \[B, I\]"):
        m.step(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"x: expected one step \[B, I\]"):
        m.step(np.zeros((1, 4, 2), np.float32))
    with pytest.raises(TypeError, match="x: dtype float64 does not match"):
        m.step(x.astype(np.float64))
    with pytest.raises(TypeError, match="state: expected a tuple"):
        m.step(x, np.zeros((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="state.h: expected shape"):
        m.step(x, m.initial_state(3))
    h, c = m.initial_state(4)
    with pytest.raises(ValueError, match="state.c: expected shape"):
        m.step(x, (h, c[:1]))
    with pytest.raises(TypeError, match="state.h: dtype float64"):
        m.step(x, (h.astype(np.float64), c))
    with pytest.raises(ValueError, match="batch"):
        m.initial_state(-1)
    m.weight_ih_l0 = np.zeros((12, 5), np.float32)  # a bad replacement is caught
    with pytest.raises(ValueError, match="w_ih: expected shape"):
        m.step(x)
