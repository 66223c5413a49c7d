"""lstmx.LSTM.step: online inference one step at a time equals the full-sequence call."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_close

import lstmx
from lstmx import _core, reference

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


def _stepped(m: lstmx.LSTM | lstmx.FrozenLSTM, x: np.ndarray, state: Any = None
             ) -> tuple[np.ndarray, Any]:
    ys = []
    for t in range(x.shape[0]):
        y, state = m.step(x[t], state)
        ys.append(y)
    return np.stack(ys), state


@pytest.mark.parametrize("frozen", [False, True], ids=["layer", "frozen"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", VARIANTS)
def test_step_equals_sequence(kw: dict[str, Any], dtype: Any, frozen: bool) -> None:
    m = lstmx.LSTM(4, 5, dtype=dtype, seed=1, **kw)
    x = np.random.default_rng(0).standard_normal((7, 3, 4)).astype(dtype)
    y, (h_n, c_n) = m(x)
    s = m.freeze() if frozen else m  # frozen: the packed weights
    ys, state = _stepped(s, x, s.initial_state(3))
    tol = _tol(dtype)
    assert isinstance(state, lstmx.StreamState) and state.h.dtype == dtype
    np.testing.assert_allclose(ys, y, rtol=0, atol=tol)
    np.testing.assert_allclose(state.h, h_n, rtol=0, atol=tol)
    np.testing.assert_allclose(state.c, c_n, rtol=0, atol=tol)


# The step kernel (lstmx.h, lstm_step): sizes with vector tails (I = 37, H = 70, P = 33) and
# more blocks of units than threads; layer norm takes the sequence kernel (forward_ln), which
# computes one step's products as dot products of the weights as they are (Options::dots)
# unless they are packed (frozen).
KERNEL_VARIANTS: list[dict[str, Any]] = [
    {},
    dict(num_layers=3, bias=False, forget_bias=None),
    dict(num_layers=2, proj_size=33, peephole=True, clip=0.5),
    dict(input_forget=True, zoneout_h=0.3, zoneout_c=0.6),
    dict(layer_norm=True, proj_size=9),
]


@pytest.mark.parametrize("frozen", [False, True], ids=["layer", "frozen"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", KERNEL_VARIANTS)
@pytest.mark.parametrize("batch", [1, 2, 5])  # the dot tiles: 2 units by 1 or 2 entries; 1 by 4
def test_step_kernel_at_every_isa(isa: str, kw: dict[str, Any], dtype: Any, frozen: bool,
                                  batch: int) -> None:
    m = lstmx.LSTM(37, 70, dtype=dtype, seed=3, **kw)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, batch, 37)).astype(dtype)
    h0, c0 = (rng.standard_normal(a.shape).astype(dtype) for a in m.initial_state(batch))
    y, (h_n, c_n) = m(x, (h0, c0))
    ys, state = _stepped(m.freeze() if frozen else m, x, (h0, c0))
    for got, want, what in ((ys, y, "y"), (state.h, h_n, "h_n"), (state.c, c_n, "c_n")):
        assert_close(got, want, dtype, f"{what} at {isa}")


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "ln"])
@pytest.mark.parametrize("frozen", [False, True], ids=["layer", "frozen"])
def test_step_same_for_any_thread_count(isa: str, frozen: bool, layer_norm: bool) -> None:
    """Each unit's sums run in a fixed order, however the units are split among threads."""
    lay = lstmx.LSTM(50, 130, num_layers=2, proj_size=40, peephole=True, seed=0,
                     layer_norm=layer_norm)
    m = lay.freeze() if frozen else lay
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
    plan = _core.step_plan(layers)
    plan.run(x, h, c)
    with pytest.raises(ValueError, match="layers: expected one tuple per layer"):
        _core.step_plan(layers[:1]).run(x, h, c)
    with pytest.raises(ValueError, match="w_hr: expected one exactly"):
        _core.step_plan([lay[:4] + (None,) + lay[5:] for lay in layers])
    with pytest.raises(ValueError, match=r"w_ih: expected shape \(16, 2\)"):
        _core.step_plan([layers[0], layers[0]])  # layer 1's input is h: R = 2
    with pytest.raises(ValueError, match=r"x: expected shape \(1, 2\)"):
        _core.step_plan([layers[1], layers[1]]).run(x, h, c)  # I = 2 from w_ih
    with pytest.raises(ValueError, match=r"c: expected shape \(2, 1, 4\)"):
        plan.run(x, h, c[:1])
    with pytest.raises(ValueError, match="x: expected a 2-D"):
        plan.run(x[None], h, c)
    with pytest.raises(TypeError, match="b_ih: expected a numpy array of float32"):
        _core.step_plan([lay[:2] + (lay[2].astype(np.float64),) + lay[3:] for lay in layers])
    with pytest.raises(ValueError, match="zoneout_h: expected a probability"):
        _core.step_plan(layers, zoneout_h=1.5)
    with pytest.raises(TypeError, match=r"layers\[0\]\[0\] \(w_ih\): expected a numpy"):
        _core.step_plan([(layers[0][0].astype(np.int32),) + layers[0][1:]])
    packed = _core.pack(*layers[1][:2], layers[1][4])  # layer 1's sizes: I = 2, not 3
    with pytest.raises(ValueError, match=r"packed: made for I, H, P = 2, 4, 2, got 3, 4, 2"):
        _core.step_plan([layers[0] + (packed,), layers[1] + (packed,)])
    with pytest.raises(TypeError, match="packed: expected weights packed in float32"):
        _core.step_plan([layers[0] + (np.zeros(3),), layers[1]])
    # the fast path answers None wherever the caller must check (and convert) the arguments
    owner = {"w": layers[0][0]}
    fast = _core.step_plan(layers, names=("w",), params=(layers[0][0],))
    y, state = fast(x, (h, c), owner)
    np.testing.assert_array_equal(y, plan.run(x, h, c)[0])
    assert type(state) is tuple and len(state) == 2
    for args in [(x.astype(np.float64), (h, c)), (x[:, :2], (h, c)), (x.T, (h, c)),
                 (x.tolist(), (h, c)), (x, None), (x, [h, c]), (x, (h, c, c)), (x, (h, c[:1])),
                 (x, (h[:, :, :1], c)), (x, (np.asfortranarray(h), c)),
                 (np.ma.masked_array(x), (h, c)), (np.zeros((2, 3), np.float32), (h, c))]:
        assert fast(*args, owner) is None
    assert fast(x, (h, c), {"w": layers[0][0].copy()}) is None  # a replaced parameter
    assert fast(x, (h, c), {}) is None
    assert fast(x, (h, c), None) is None


def test_frozen_step_refuses_other_kernels() -> None:
    """A frozen layer's packing belongs to the kernels that were active when it was made."""
    isas = lstmx.config()["isas_available"]
    if len(isas) < 2:
        pytest.skip("this CPU has one kernel level")
    m = lstmx.LSTM(3, 5, seed=0).freeze()
    x = np.ones((1, 3), np.float32)
    state = m.step(x)[1]
    old = str(lstmx.config()["isa"])
    _core.set_isa(isas[-1] if old != isas[-1] else isas[0])
    try:
        with pytest.raises(ValueError, match="pack .freeze. again"):
            m.step(x, state)
    finally:
        _core.set_isa(old)
    m.step(x, state)


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


def _rounded(m: lstmx.LSTM) -> lstmx.LSTM:
    """m with its weight matrices rounded to float16 (the snapshot freeze(np.float16) makes)."""
    r = copy.deepcopy(m)
    for k, v in r.named_parameters().items():
        if k.startswith("weight_"):
            v[...] = v.astype(np.float16)
    return r


HALF_VARIANTS: list[dict[str, Any]] = [
    {},
    dict(num_layers=3, peephole=True, clip=0.5),
    dict(num_layers=2, proj_size=9, input_forget=True, zoneout_h=0.3, zoneout_c=0.2),
    dict(layer_norm=True, num_layers=2),
]


@pytest.mark.parametrize("kw", HALF_VARIANTS)
@pytest.mark.parametrize("batch", [1, 2, 7])  # tiles of one row; of two; 6 rows and one
def test_float16_weights_are_the_rounded_layer_bitwise(isa: str, kw: dict[str, Any],
                                                       batch: int) -> None:
    """freeze(np.float16): every result is bitwise that of the layer with its weights rounded
    to float16 (the step reads float16 panels; the same sums in the same order), and close to
    the NumPy reference of that layer."""
    m = lstmx.LSTM(37, 70, seed=3, **kw)
    m.weight_hh_l0[0, :4] = [3e-7, -6.1e-5, 65504.0, 1e-9]  # float16 subnormals, its max, zero
    f16 = m.freeze(np.float16)
    r = _rounded(m)
    for k, v in r.named_parameters().items():
        np.testing.assert_array_equal(getattr(f16.layer, k), v, err_msg=k)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, batch, 37)).astype(np.float32)
    hx = tuple(rng.standard_normal(a.shape).astype(np.float32) for a in m.initial_state(batch))
    want = r.freeze()
    ys, state = _stepped(f16, x, hx)
    ye, se = _stepped(want, x, hx)
    for got, exp in ((ys, ye), (state.h, se.h), (state.c, se.c)):
        np.testing.assert_array_equal(got, exp)
    (y1, (h1, c1)), (y2, (h2, c2)) = f16(x, hx), want(x, hx)
    for got, exp in ((y1, y2), (h1, h2), (c1, c2)):
        np.testing.assert_array_equal(got, exp)
    old = lstmx.get_num_threads()
    try:
        for n in (1, 3):  # each unit on one thread, whichever
            lstmx.set_num_threads(n)
            np.testing.assert_array_equal(_stepped(f16, x, hx)[0], ys)
    finally:
        lstmx.set_num_threads(old)
    y, _ = r(x, hx)
    assert_close(ys, y, np.float32, f"step against the sequence at {isa}")
    assert not np.array_equal(m.weight_ih_l0, f16.layer.weight_ih_l0)  # it did round


def test_float16_weights_arguments() -> None:
    m = lstmx.LSTM(3, 4, seed=0)
    f = m.freeze("float16")
    assert f.weight_dtype == np.float16 and f.nbytes > m.freeze().nbytes
    assert repr(f) == f"FrozenLSTM({m!r}, weight_dtype='float16')"
    g = pickle.loads(pickle.dumps(f))
    assert g.weight_dtype == np.float16
    np.testing.assert_array_equal(g.step(np.ones((1, 3), np.float32))[0],
                                  f.step(np.ones((1, 3), np.float32))[0])
    assert m.freeze(np.float32).weight_dtype == np.float32  # the layer's own: as freeze()
    bi = lstmx.LSTM(3, 4, 2, bidirectional=True, proj_size=2, seed=1)  # no step: no panels
    x = np.random.default_rng(2).standard_normal((5, 2, 3)).astype(np.float32)
    (y1, s1), (y2, s2) = bi.freeze(np.float16)(x), _rounded(bi)(x)
    for a, b in ((y1, y2), *zip(s1, s2)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="weight_dtype: expected None, float64 or"):
        lstmx.LSTM(3, 4, dtype=np.float64).freeze(np.float16)
    with pytest.raises(ValueError, match="weight_dtype: expected"):
        m.freeze(np.int16)
    with pytest.raises(TypeError, match="weight_dtype:"):
        m.freeze("bfloat17")
    m.weight_hh_l0[1, 2] = 1e5
    with pytest.raises(ValueError, match=r"weight_hh_l0 has values beyond float16's range"):
        m.freeze(np.float16)
    assert m.weight_hh_l0[1, 2] == 1e5  # the layer itself untouched
    w = np.full((16, 3), 0.1, np.float32)  # 0.1 is no float16 value
    with pytest.raises(ValueError, match="half: w_ih, w_hh hold values that float16 cannot"):
        _core.pack(w, np.zeros((16, 4), np.float32), half=True)
    with pytest.raises(TypeError, match="half: float16 panels need float32 weights"):
        _core.pack(w.astype(np.float64), np.zeros((16, 4)), half=True)
    assert _core.pack(w, np.zeros((16, 4), np.float32)).half is False


INT8_VARIANTS: list[dict[str, Any]] = [
    {},
    dict(num_layers=3, peephole=True, clip=0.5),
    dict(num_layers=2, proj_size=9, input_forget=True, zoneout_h=0.3, zoneout_c=0.2),
    dict(bias=False, forget_bias=None),
]


def _int8_reference(m: lstmx.LSTM, x: np.ndarray, hx: Any = None, lengths: Any = None
                    ) -> tuple[np.ndarray, Any]:
    y, state, _ = reference.lstm_stack_forward(
        x, m.named_parameters(), num_layers=m.num_layers, hx=hx, lengths=lengths, clip=m.clip,
        input_forget=m.input_forget, zoneout_h=m.zoneout_h, zoneout_c=m.zoneout_c, int8=True)
    return y, state


@pytest.mark.parametrize("kw", INT8_VARIANTS)
@pytest.mark.parametrize("batch", [1, 2, 7])  # VNNI tiles of 1, 2 and 4 rows
def test_int8_step_is_the_reference(isa: str, kw: dict[str, Any], batch: int) -> None:
    """freeze(np.int8): each step quantizes x and h per row and sums integer products exactly,
    as lstmx.reference does (I = 37, R = 9 or 70: quads padded); the same bits for any thread
    count; within about 1% of the float32 layer."""
    m = lstmx.LSTM(37, 70, seed=3, **kw)
    q = m.freeze(np.int8)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, batch, 37)).astype(np.float32)
    hx = tuple(0.5 * rng.standard_normal(a.shape).astype(np.float32)
               for a in m.initial_state(batch))
    ys, state = _stepped(q, x, hx)
    y, (h_n, c_n) = _int8_reference(m, x, hx)
    # The sums are exact; the cell's float32 functions differ from NumPy's by ulps, which can
    # move a quantized h by one step of its grid at the next step: hence 1e-4, not 1e-6.
    for got, want in ((ys, y), (state.h, h_n), (state.c, c_n)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=isa)
    y32, _ = m(x, hx)
    assert 0 < np.abs(ys - y32).max() < 0.02 * np.abs(y32).max()
    old = lstmx.get_num_threads()
    try:
        for n in (1, 3):  # integer sums: the same bits whichever thread runs a unit
            lstmx.set_num_threads(n)
            np.testing.assert_array_equal(_stepped(q, x, hx)[0], ys)
    finally:
        lstmx.set_num_threads(old)
    y1, (h1, c1) = q(x, hx)  # a sequence: step by step
    for got, want in ((y1, ys), (h1, state.h), (c1, state.c)):
        np.testing.assert_array_equal(got, want)


def test_int8_without_vnni_gives_the_same_bits(tmp_path: Path) -> None:
    """The pmaddwd path (a CPU without AVX512-VNNI; LSTMX_NO_VNNI forces it) sums the same
    integers as vpdpbusd: the same bits, in a process of each."""
    code = ("import sys, numpy as np, lstmx\n"
            "m = lstmx.LSTM(37, 70, num_layers=2, proj_size=9, seed=3)\n"
            "x = np.random.default_rng(4).standard_normal((5, 7, 37)).astype(np.float32)\n"
            "np.save(sys.argv[1], m.freeze(np.int8)(x)[0])\n")
    for name, extra in (("vnni", {}), ("madd", {"LSTMX_NO_VNNI": "1"})):
        env = {k: v for k, v in os.environ.items() if k != "LSTMX_NO_VNNI"}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True,
                       env={**env, **extra}, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "vnni.npy"), np.load(tmp_path / "madd.npy"))


def test_int8_single_step_matches_the_reference_closely() -> None:
    """One step from a given state: the pre-activations are bitwise the reference's, so only
    the cell's functions differ (float32 ulps)."""
    m = lstmx.LSTM(300, 256, num_layers=1, seed=7)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 300)).astype(np.float32) * np.float32([[1], [1e-3], [40]])
    hx = tuple(rng.standard_normal(a.shape).astype(np.float32) for a in m.initial_state(3))
    y, state = m.freeze(np.int8).step(x, hx)
    yr, (hr, cr) = _int8_reference(m, x[None], hx)
    np.testing.assert_allclose(y, yr[0], rtol=0, atol=2e-6)
    np.testing.assert_allclose(state.c, cr, rtol=0, atol=2e-6)


def test_int8_rows_are_independent() -> None:
    """Each batch row has its own scale: a NaN, zeros or a huge row changes only its own
    outputs (NaN for the NaN row, as the float32 layer gives)."""
    m = lstmx.LSTM(20, 24, num_layers=2, seed=1)
    q = m.freeze(np.int8)
    x = np.random.default_rng(2).standard_normal((4, 20)).astype(np.float32)
    x[1] = 0
    x[2, 3] = np.nan
    x[3] *= 1e30
    y, state = q.step(x)
    assert np.isnan(y[2]).all() and np.isfinite(np.delete(y, 2, axis=0)).all()
    for b in (0, 1, 3):
        yb, sb = q.step(x[b:b + 1])
        np.testing.assert_array_equal(yb[0], y[b])
        np.testing.assert_array_equal(sb.c[:, 0], state.c[:, b])
    yr, _ = _int8_reference(m, x[None])
    np.testing.assert_allclose(y, yr[0], rtol=0, atol=2e-6)


def test_int8_sequence_calls() -> None:
    """FrozenLSTM(int8)(x): lengths (an ended sequence keeps its state, y = 0), batch_first,
    unbatched input, as the reference."""
    m = lstmx.LSTM(6, 8, num_layers=2, proj_size=5, batch_first=True, seed=4)
    q = m.freeze("int8")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 6)).astype(np.float32)  # [B, T, I]
    lengths = np.array([5, 0, 2])
    y, (h_n, c_n) = q(x, lengths=lengths)
    yr, (hr, cr) = _int8_reference(m, x.swapaxes(0, 1), lengths=lengths)
    np.testing.assert_allclose(y, yr.swapaxes(0, 1), rtol=0, atol=1e-4)
    np.testing.assert_allclose(h_n, hr, rtol=0, atol=1e-4)
    np.testing.assert_allclose(c_n, cr, rtol=0, atol=1e-4)
    assert (y[1] == 0).all() and (y[2, 2:] == 0).all() and (h_n[:, 1] == 0).all()
    y0, (h0, _) = q(x[:0], lengths=np.zeros(0, np.int64))  # no sequences
    assert y0.shape == (0, 5, 5) and h0.shape == (2, 0, 5)
    y1, (h1, c1) = q(x[0])  # unbatched [T, I]
    np.testing.assert_array_equal(y1, q(x[:1])[0][0])
    assert h1.shape == (2, 5) and c1.shape == (2, 8)


def test_int8_and_other_layers_in_one_step() -> None:
    """The kernel takes each layer's panels as they come: int8 above float32, and below plain
    weights (only FrozenLSTM builds the first, but a direct call cannot crash either)."""
    m = lstmx.LSTM(6, 8, num_layers=2, proj_size=5, seed=2)
    layers = [m._step_pass(k).layer for k in range(2)]
    f32 = [_core.pack(*lay[:2], lay[4]) for lay in layers]
    i8 = [_core.pack(*lay[:2], lay[4], int8=True) for lay in layers]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    h, c = (0.5 * rng.standard_normal(a.shape).astype(np.float32) for a in m.initial_state(3))
    for packs in ((f32[0], i8[1]), (i8[0], None)):
        _, hn, cn = _core.step_plan([lay if pk is None else lay + (pk,)
                                     for lay, pk in zip(layers, packs)]).run(x, h, c)
        for k, pk in enumerate(packs):  # each layer on the input the kernel gave it
            w_ih, w_hh, b_ih, b_hh, w_hr = layers[k][:5]
            _, want_h, want_c, _ = reference.lstm_forward(
                (x if k == 0 else hn[0])[None], w_ih, w_hh, b_ih, b_hh, h[k], c[k], w_hr=w_hr,
                int8=pk is not None and pk.int8)
            np.testing.assert_allclose(hn[k], want_h, rtol=0, atol=2e-6)
            np.testing.assert_allclose(cn[k], want_c, rtol=0, atol=2e-6)


def test_int8_arguments() -> None:
    m = lstmx.LSTM(30, 40, seed=0)
    q = m.freeze(np.int8)
    assert q.weight_dtype == np.int8 and repr(q) == f"FrozenLSTM({m!r}, weight_dtype='int8')"
    assert q.nbytes < m.freeze(np.float16).nbytes / 2  # int8 panels only (and W_hr's)
    np.testing.assert_array_equal(q.layer.weight_ih_l0, m.weight_ih_l0)  # not rounded
    g = pickle.loads(pickle.dumps(q))
    x = np.ones((2, 30), np.float32)
    np.testing.assert_array_equal(g.step(x)[0], q.step(x)[0])
    for kw, what in ((dict(bidirectional=True), "bidirectional"), (dict(reverse=True), "reverse"),
                     (dict(layer_norm=True), "layer_norm")):
        with pytest.raises(ValueError, match=f"int8 is for the streaming step, not with {what}"):
            lstmx.LSTM(3, 4, **kw).freeze(np.int8)
    with pytest.raises(ValueError, match="weight_dtype: expected None, float64 or"):
        lstmx.LSTM(3, 4, dtype=np.float64).freeze(np.int8)
    m.weight_hh_l0[1, 2] = np.inf
    with pytest.raises(ValueError, match="int8 needs finite weights; weight_hh_l0 has 1 values"):
        m.freeze(np.int8)
    w, u = np.ones((16, 3), np.float32), np.ones((16, 4), np.float32)
    with pytest.raises(ValueError, match="half, int8: at most one of them"):
        _core.pack(w, u, half=True, int8=True)
    with pytest.raises(TypeError, match="int8: int8 panels need float32 weights"):
        _core.pack(w.astype(np.float64), u.astype(np.float64), int8=True)
    w[3, 1] = np.nan
    with pytest.raises(ValueError, match="int8: w_ih, w_hh hold values that are not finite"):
        _core.pack(w, u, int8=True)
    w[3, 1] = 1
    pk = _core.pack(w, u, int8=True)
    assert pk.int8 and not pk.half
    with pytest.raises(ValueError, match="packed: int8 weights are for lstm_step only"):
        _core.forward(np.ones((2, 1, 3), np.float32), w, u, None, None, None, False, False,
                      packed=pk)
