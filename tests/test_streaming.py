"""lstmx.LSTM.step: online inference one step at a time equals the full-sequence call."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import assert_close

import lstmx
from lstmx import _core

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


# The step kernel (lstmx.h, lstm_step): sizes with vector tails (I = 37, H = 70, P = 33) and
# more blocks of units than threads; layer norm takes the sequence kernels.
KERNEL_VARIANTS: list[dict[str, Any]] = [
    {},
    dict(num_layers=3, bias=False, forget_bias=None),
    dict(num_layers=2, proj_size=33, peephole=True, clip=0.5),
    dict(input_forget=True, zoneout_h=0.3, zoneout_c=0.6),
    dict(layer_norm=True, proj_size=9),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", KERNEL_VARIANTS)
def test_step_kernel_at_every_isa(isa: str, kw: dict[str, Any], dtype: Any) -> None:
    m = lstmx.LSTM(37, 70, dtype=dtype, seed=3, **kw)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 5, 37)).astype(dtype)
    h0, c0 = (rng.standard_normal(a.shape).astype(dtype) for a in m.initial_state(5))
    y, (h_n, c_n) = m(x, (h0, c0))
    ys, state = _stepped(m, x, (h0, c0))
    for got, want, what in ((ys, y, "y"), (state.h, h_n, "h_n"), (state.c, c_n, "c_n")):
        assert_close(got, want, dtype, f"{what} at {isa}")


def test_step_same_for_any_thread_count(isa: str) -> None:
    """Each unit's sums run in a fixed order, however the units are split among threads."""
    m = lstmx.LSTM(50, 130, num_layers=2, proj_size=40, peephole=True, seed=0)
    x = np.random.default_rng(5).standard_normal((3, 50)).astype(np.float32)
    old = lstmx.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            lstmx.set_num_threads(n)
            y, state = m.step(x)
            runs.append((y, *state, *m.step(x, state)[1]))
    finally:
        lstmx.set_num_threads(old)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


def test_core_step_checks_its_arguments() -> None:
    """A direct call of the private kernel cannot crash the process either."""
    m = lstmx.LSTM(3, 4, num_layers=2, proj_size=2, seed=0)
    layers = [m._step_pass(k).layer for k in range(2)]
    x = np.zeros((1, 3), np.float32)
    h, c = m.initial_state(1)
    _core.step(x, h, c, layers)
    with pytest.raises(ValueError, match="layers: expected one tuple per layer"):
        _core.step(x, h, c, layers[:1])
    with pytest.raises(ValueError, match="w_hr: expected one exactly"):
        _core.step(x, h, c, [lay[:4] + (None,) + lay[5:] for lay in layers])
    with pytest.raises(ValueError, match=r"w_ih: expected shape \(16, 3\)"):
        _core.step(x, h, c, [layers[1], layers[1]])
    with pytest.raises(ValueError, match=r"c: expected shape \(2, 1, 4\)"):
        _core.step(x, h, c[:1], layers)
    with pytest.raises(ValueError, match="x: expected a 2-D"):
        _core.step(x[None], h, c, layers)
    with pytest.raises(TypeError, match="b_ih: expected a numpy array of float32"):
        _core.step(x, h, c, [lay[:2] + (lay[2].astype(np.float64),) + lay[3:] for lay in layers])
    with pytest.raises(ValueError, match="zoneout_h: expected a probability"):
        _core.step(x, h, c, layers, zoneout_h=1.5)


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
    np.testing.assert_allclose(m.step(x)[0], m(x[None])[0][0], rtol=0, atol=1e-6)


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
