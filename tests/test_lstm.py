"""lstmx's C++ forward and backward against the NumPy reference."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from conftest import GRAD_NAMES, ISAS, RECORD, numerical_grads, DTYPES, assert_close, make_case

import os
import subprocess
import sys
from collections.abc import Iterator

import lstmx
from lstmx import _core
from lstmx import functional as F
from lstmx import reference as R

SHAPES = [  # T, B, I, H: T = 1, B = 1, I != H, H not a multiple of 16
    (1, 1, 1, 1),
    (1, 3, 4, 5),
    (5, 1, 7, 3),
    (9, 4, 6, 13),
    (12, 3, 17, 16),
    (4, 2, 33, 17),
    (30, 5, 8, 24),
]


def _grad_names(has_bias: bool) -> list[str]:
    return ["dx", "dh0", "dc0", "dw_ih", "dw_hh"] + (["db_ih", "db_hh"] if has_bias else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_forward_backward_match_reference(dtype: Any, shape: tuple[int, ...],
                                          batch_first: bool, isa: str) -> None:
    _match_reference(dtype, shape, batch_first)


def test_weights_packed_past_the_caches_match_reference(isa: str) -> None:
    """Weights of more than half the last-level cache are packed with non-temporal stores
    (lstm.cpp, stream_packing), forward and backward: at H = 1100, 39 MiB of float64 weights,
    against the reference; float32 (19 MiB) against float64, to its sums of 1108 terms."""
    _match_reference(np.float64, (3, 2, 8, 1100), False)
    c = make_case(3, 2, 8, 1100, np.float32, seed=5)
    c64 = {k: v.astype(np.float64) for k, v in c.items()}
    y, hn, cn, tape = lstmx.lstm_train(**c)
    y64, hn64, cn64, tape64 = lstmx.lstm_train(**c64)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    g, g64 = lstmx.lstm_backward(tape, dy), lstmx.lstm_backward(tape64, dy.astype(np.float64))
    for name, a, r in [("y", y, y64), ("h_n", hn, hn64), ("c_n", cn, cn64),
                       *((k, getattr(g, k), getattr(g64, k)) for k in _grad_names(True))]:
        scale = max(1.0, float(np.max(np.abs(r))))
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


def _match_reference(dtype: Any, shape: tuple[int, ...], batch_first: bool) -> None:
    T, B, I, H = shape
    c = make_case(T, B, I, H, dtype, seed=T * 100 + H, batch_first=batch_first)
    c64 = {k: v.astype(np.float64) for k, v in c.items()}
    yr, hr, cr, cache = R.lstm_forward(**c64, batch_first=batch_first)
    y, hn, cn, tape = lstmx.lstm_train(**c, batch_first=batch_first)
    for name, a, r in (("y", y, yr), ("h_n", hn, hr), ("c_n", cn, cr)):
        assert a.dtype == dtype
        assert_close(a, r, dtype, name)
    # inference gives the very same numbers as training
    yi, hi, ci = lstmx.lstm(**c, batch_first=batch_first)
    np.testing.assert_array_equal(yi, y)
    np.testing.assert_array_equal(hi, hn)
    np.testing.assert_array_equal(ci, cn)

    rng = np.random.default_rng(1)
    dy, dh, dc = (rng.standard_normal(a.shape).astype(dtype) for a in (y, hn, cn))
    g = lstmx.lstm_backward(tape, dy, dh, dc)
    gr = R.lstm_backward(cache, dy.astype(np.float64), dh.astype(np.float64),
                         dc.astype(np.float64))
    for k in _grad_names(True):
        assert getattr(g, k).dtype == dtype
        assert_close(getattr(g, k), gr[k], dtype, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_state,with_bias,with_dy,with_dn",
                         list(itertools.product([False, True], repeat=4)))
def test_optional_arguments(dtype: Any, with_state: bool, with_bias: bool, with_dy: bool,
                            with_dn: bool) -> None:
    c = make_case(6, 3, 4, 5, dtype, seed=3)
    if not with_state:
        c["h0"] = c["c0"] = None  # type: ignore[assignment]
    if not with_bias:
        c["b_ih"] = c["b_hh"] = None  # type: ignore[assignment]
    c64 = {k: None if v is None else v.astype(np.float64) for k, v in c.items()}
    yr, _, _, cache = R.lstm_forward(**c64)
    y, hn, cn, tape = lstmx.lstm_train(**c)
    assert_close(y, yr, dtype, "y")
    rng = np.random.default_rng(2)
    dy = rng.standard_normal(y.shape).astype(dtype) if with_dy else None
    dh = rng.standard_normal(hn.shape).astype(dtype) if with_dn else None
    dc = rng.standard_normal(cn.shape).astype(dtype) if with_dn else None
    g = lstmx.lstm_backward(tape, dy, dh, dc)
    f64 = (lambda a: None if a is None else a.astype(np.float64))
    gr = R.lstm_backward(cache, f64(dy), f64(dh), f64(dc))
    for k in _grad_names(with_bias):
        assert_close(getattr(g, k), gr[k], dtype, k)
    if not with_bias:
        assert g.db_ih is None and g.db_hh is None
    if not (with_dy or with_dn):
        assert not np.any(g.dw_ih) and not np.any(g.dx)


def test_only_one_bias() -> None:
    c = make_case(4, 2, 3, 5)
    y1, *_ = lstmx.lstm(c["x"], c["w_ih"], c["w_hh"], b_ih=c["b_ih"])
    y2, *_ = lstmx.lstm(c["x"], c["w_ih"], c["w_hh"], b_hh=c["b_ih"])
    yr, *_ = R.lstm_forward(c["x"], c["w_ih"], c["w_hh"], b_ih=c["b_ih"])
    assert_close(y1, yr, np.float64)
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("lengths, reverse", [(None, False), ([7, 0, 3, 7, 1], False),
                                              ([2, 5, 0, 7, 6], True)])
def test_naive_kernel_agrees_with_fast(dtype: Any, batch_first: bool, lengths: Any, reverse: bool,
                                       isa: str) -> None:
    c = make_case(7, 5, 6, 19, dtype, seed=11, batch_first=batch_first)
    outs = [F._forward(**c, batch_first=batch_first, training=True, naive=n, lengths=lengths,
                       reverse=reverse) for n in (0, 1)]
    tol = 1e-14 if dtype == np.float64 else 2e-6
    for a, b in zip(outs[0][:3], outs[1][:3]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    dy = np.random.default_rng(0).standard_normal(outs[0][0].shape).astype(dtype)
    ga = F._backward(outs[0][3], dy, None, None, naive=False)
    gb = F._backward(outs[1][3], dy, None, None, naive=True)
    assert ga.dpeephole is ga.dw_hr is gb.dpeephole is gb.dw_hr is None
    for a, b in zip(ga[:7], gb[:7]):
        np.testing.assert_allclose(a, b, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("variant", ["naive", "plain", "lengths, reverse", "projection",
                                     "layer norm", "peephole, zoneout"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_y_out_half_of_a_wider_array(variant: str, batch_first: bool, isa: str) -> None:
    """A pass that writes y into its half of a bidirectional layer's [T, B, 2R] array (y_out)
    and reads dy from the half of one computes bitwise what it computes on arrays of its own."""
    T, B, I, H, P = 5, 7, 6, 19, 0
    c = make_case(T, B, I, H, np.float32, seed=4, batch_first=batch_first)
    rng = np.random.default_rng(1)
    kw: dict[str, Any] = {}
    if variant == "lengths, reverse":
        kw = dict(lengths=np.array([5, 0, 3, 5, 1, 2, 4]), reverse=True)
    elif variant == "projection":
        P = 7
        c["w_hh"], c["h0"] = c["w_hh"][:, :P].copy(), c["h0"][:, :P].copy()
        kw = dict(w_hr=rng.standard_normal((P, H)).astype(np.float32) * 0.3)
    elif variant == "layer norm":
        kw = dict(layer_norm=tuple(1 + 0.1 * rng.standard_normal(n).astype(np.float32)
                                   for n in (4 * H, 4 * H, H, H)))
    elif variant == "peephole, zoneout":
        kw = dict(peephole=0.3 * rng.standard_normal((3, H)).astype(np.float32), zoneout_h=0.2,
                  zoneout_c=0.1, seed=5)
    R = P or H
    naive = variant == "naive"
    shape = (B, T, 2 * R) if batch_first else (T, B, 2 * R)
    for training in (False, True):
        own = F._forward(**c, batch_first=batch_first, training=training, naive=naive, **kw)
        both = np.full(shape, np.nan, np.float32)
        half = F._forward(**c, batch_first=batch_first, training=training, naive=naive,
                          y_out=both[..., R:], **kw)
        assert np.shares_memory(half[0], both)
        assert np.isnan(both[..., :R]).all()  # the other half untouched
        for a, b in zip(own[:3], half[:3]):
            np.testing.assert_array_equal(a, b)
        if training:
            dy = rng.standard_normal(shape).astype(np.float32)
            ga = F._backward(own[3], dy[..., R:].copy(), None, None, naive=naive)
            gb = F._backward(half[3], dy[..., R:], None, None, naive=naive)
            gc = F._backward(half[3], dy[..., R:].copy(), None, None, naive=naive)  # copied in
            for a, b, d in zip(ga, gb, gc):
                if a is None:
                    assert b is None and d is None
                    continue
                for u, v, w in zip(*(x if isinstance(x, tuple) else (x,) for x in (a, b, d))):
                    np.testing.assert_array_equal(u, v)
                    np.testing.assert_array_equal(u, w)


def test_naive_kernel_refuses_cell_variants() -> None:
    c = make_case(3, 2, 2, 3)
    with pytest.raises(ValueError, match="naive kernel"):
        F._forward(**c, batch_first=False, training=False, naive=True, clip=1.0)


@pytest.mark.parametrize("batch_first", [False, True])
def test_gradient_check_finite_differences(batch_first: bool) -> None:
    """Every gradient lstmx computes, against central differences of lstmx itself (float64)."""
    c = make_case(T=4, B=2, I=3, H=5, batch_first=batch_first, seed=5)
    rng = np.random.default_rng(9)
    y, hn, cn, tape = lstmx.lstm_train(**c, batch_first=batch_first)
    wy, wh, wc = (rng.standard_normal(a.shape) for a in (y, hn, cn))

    def loss() -> float:
        y, hn, cn = lstmx.lstm(**c, batch_first=batch_first)
        return float((y * wy).sum() + (hn * wh).sum() + (cn * wc).sum())

    g = lstmx.lstm_backward(tape, wy, wh, wc)
    num = numerical_grads(loss, c)
    for k, gk in GRAD_NAMES.items():
        np.testing.assert_allclose(getattr(g, gk), num[k], rtol=1e-6, atol=1e-8, err_msg=k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cell_step_matches_reference_and_sequence(dtype: Any) -> None:
    c = make_case(1, 4, 6, 7, dtype, seed=21)
    x = c["x"][0]
    h, cc, tape = lstmx.lstm_cell_train(x, c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"], c["h0"],
                                        c["c0"])
    h2, c2 = lstmx.lstm_cell(x, c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"], c["h0"], c["c0"])
    np.testing.assert_array_equal(h, h2)
    np.testing.assert_array_equal(cc, c2)
    c64 = {k: v.astype(np.float64) for k, v in c.items()}
    yr, hr, cr, cache = R.lstm_forward(**c64)
    assert h.shape == (4, 7) and cc.shape == (4, 7)
    assert_close(h, hr, dtype, "h")
    assert_close(cc, cr, dtype, "c")
    rng = np.random.default_rng(4)
    dh, dc = rng.standard_normal((2, 4, 7)).astype(dtype)
    g = lstmx.lstm_cell_backward(tape, dh, dc)
    gr = R.lstm_backward(cache, None, dh.astype(np.float64), dc.astype(np.float64))
    assert g.dx.shape == x.shape
    assert_close(g.dx, gr["dx"][0], dtype, "dx")
    for k in ("dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"):
        assert_close(getattr(g, k), gr[k], dtype, k)
    # no state given: zeros
    h3, c3 = lstmx.lstm_cell(x, c["w_ih"], c["w_hh"])
    yr3, _, cr3, _ = R.lstm_forward(c64["x"], c64["w_ih"], c64["w_hh"])
    assert_close(h3, yr3[0], dtype, "h")
    assert_close(c3, cr3, dtype, "c")


def test_cell_steps_chain_to_sequence() -> None:
    c = make_case(5, 2, 3, 4, seed=8)
    h, cc = c["h0"], c["c0"]
    for t in range(5):
        h, cc = lstmx.lstm_cell(c["x"][t], c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"], h, cc)
    _, hn, cn = lstmx.lstm(**c)
    np.testing.assert_allclose(h, hn, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cc, cn, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed", "readonly", "list"])
def test_noncontiguous_inputs(layout: str) -> None:
    c = make_case(6, 3, 5, 4, seed=2)
    expected = lstmx.lstm(**c)
    d: dict[str, Any] = {}
    for k, v in c.items():
        if layout == "fortran":
            d[k] = np.asfortranarray(v)
        elif layout == "strided":
            big = np.zeros(v.shape + (2,))
            big[..., 0] = v
            d[k] = big[..., 0]
        elif layout == "reversed":
            d[k] = np.flip(np.flip(v, 0).copy(), 0)
        elif layout == "readonly":
            d[k] = v.copy()
            d[k].setflags(write=False)
        else:
            d[k] = v.tolist()
    if layout == "reversed":
        assert not d["x"].flags.c_contiguous
    got = lstmx.lstm(**d)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_tape_owns_its_inputs_and_can_be_reused() -> None:
    c = make_case(5, 2, 3, 4, seed=6)
    y, _, _, tape = lstmx.lstm_train(**c)
    dy = np.ones_like(y)
    g1 = lstmx.lstm_backward(tape, dy)
    for v in c.values():
        v[...] = 123.0  # the caller reuses its buffers
    g2 = lstmx.lstm_backward(tape, dy)
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)
    assert tape.nbytes > 0 and "T=5" in repr(tape)


def test_scratch_reused_between_calls_carries_nothing() -> None:
    """The kernels' scratch (packed weights, partial sums) outlives a call in a per-thread pool:
    a call after calls of other sizes, dtypes and variants, whose blocks it may reuse, gives
    bitwise what it gave first."""
    c = make_case(9, 7, 20, 37, np.float32, seed=12)
    dy = np.random.default_rng(3).standard_normal((9, 7, 37)).astype(np.float32)

    def run() -> list[np.ndarray]:
        y, hn, cn, tape = lstmx.lstm_train(**c, lengths=[9, 2, 5, 9, 1, 4, 8])
        return [y, hn, cn, lstmx.lstm(**c)[0], *lstmx.lstm_backward(tape, dy)[:5]]

    first = run()
    for k, (T, B, I, H) in enumerate([(10, 16, 48, 80), (3, 1, 5, 8), (6, 24, 33, 40)]):
        other = make_case(T, B, I, H, np.float64 if k % 2 else np.float32, seed=k)
        y, _, _, tape = lstmx.lstm_train(**other, peephole=np.ones((3, H), other["x"].dtype))
        lstmx.lstm_backward(tape, np.ones_like(y))
        for a, b in zip(first, run()):
            np.testing.assert_array_equal(a, b)


def test_large_outputs_reuse_freed_blocks_only() -> None:
    """A large output (2 MiB or more) reuses the block of one that Python has freed, never that
    of a live array: the live one keeps its values, and the results are what a first call gave."""
    c = make_case(8, 64, 16, 1024, np.float32, seed=4)  # y: 8 * 64 * 1024 floats, 2 MiB
    y1 = lstmx.lstm(**c)[0]
    kept = y1.copy()
    y2 = lstmx.lstm(**c)[0]  # y1 is alive: a block of its own
    assert y2.ctypes.data != y1.ctypes.data and y2.ctypes.data % 64 == 0
    np.testing.assert_array_equal(y1, kept)
    np.testing.assert_array_equal(y2, kept)
    freed = y2.ctypes.data
    del y2
    y3 = lstmx.lstm(**c)[0]
    assert y3.ctypes.data == freed  # the freed block, not fresh pages
    np.testing.assert_array_equal(y3, kept)
    np.testing.assert_array_equal(y1, kept)


@pytest.mark.parametrize("T,B,I,H", [(0, 3, 4, 5), (4, 0, 4, 5), (4, 3, 0, 5), (0, 0, 0, 2)])
def test_zero_sized_dimensions(T: int, B: int, I: int, H: int) -> None:
    c = make_case(T, B, I, H, seed=1)
    y, hn, cn, tape = lstmx.lstm_train(**c)
    yr, hr, cr, cache = R.lstm_forward(**c)
    assert y.shape == (T, B, H) and hn.shape == (B, H)
    for a, r in ((y, yr), (hn, hr), (cn, cr)):
        assert_close(a, r, np.float64)
    dy = np.ones_like(y)
    g = lstmx.lstm_backward(tape, dy, np.ones_like(hn), np.ones_like(cn))
    gr = R.lstm_backward(cache, dy, np.ones_like(hn), np.ones_like(cn))
    for k in _grad_names(True):
        assert_close(getattr(g, k), gr[k], np.float64, k)


def test_nan_propagates() -> None:
    c = make_case(4, 3, 2, 5, seed=3)
    c["x"][1, 2, 0] = np.nan
    y, hn, cn, tape = lstmx.lstm_train(**c)
    assert np.all(np.isfinite(y[:1])) and np.all(np.isfinite(y[:, :2]))
    assert np.isnan(y[1:, 2]).all() and np.isnan(hn[2]).all() and np.isnan(cn[2]).all()
    g = lstmx.lstm_backward(tape, np.ones_like(y))
    assert np.isnan(g.dw_ih).any() and np.isnan(g.dx[1, 2]).all()
    c["x"][1, 2, 0] = np.inf
    y, *_ = lstmx.lstm(**c)
    assert np.isfinite(y[0]).all()


def _train_and_reference(c: dict[str, np.ndarray], dtype: Any) -> tuple[list[Any], list[Any]]:
    """lstmx's outputs and gradients (with dy = dh_n = dc_n = 1), and the float64 reference's,
    in the same order; the reference is computed with NumPy's warnings off."""
    y, hn, cn, tape = lstmx.lstm_train(**{k: v.astype(dtype) for k, v in c.items()})
    g = lstmx.lstm_backward(tape, np.ones_like(y), np.ones_like(hn), np.ones_like(cn))
    with np.errstate(all="ignore"):
        yr, hr, cr, cache = R.lstm_forward(**{k: v.astype(np.float64) for k, v in c.items()})
        gr = R.lstm_backward(cache, np.ones_like(yr), np.ones_like(hr), np.ones_like(cr))
    names = _grad_names(True)
    return [y, hn, cn, *(getattr(g, k) for k in names)], [yr, hr, cr, *(gr[k] for k in names)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arg", ["x", "w_ih", "w_hh", "b_ih", "h0", "c0"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_propagate_like_the_reference(dtype: Any, arg: str, value: float,
                                                  isa: str) -> None:
    """A NaN or an Inf in any input is no error and no warning: the NaNs and Infs of every
    output and gradient are where the reference has them."""
    c = make_case(4, 3, 2, 5, seed=3)
    c[arg].flat[1] = value
    got, expected = _train_and_reference(c, dtype)
    for a, r in zip(got, expected):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(r))
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(r))
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(r))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("how", ["bias", "inputs"])
def test_extreme_preactivations_do_not_overflow(dtype: Any, how: str, isa: str) -> None:
    """Pre-activations of +-1e4 saturate the gates: no overflow warning, no NaN, and the
    reference's values (warnings are errors in this suite)."""
    c = make_case(3, 2, 4, 6, seed=2)
    if how == "bias":  # exactly +-1e4, alternating over the gates' units
        c["w_ih"][...] = c["w_hh"][...] = c["b_hh"][...] = 0
        c["b_ih"] = np.where(np.arange(24) % 2, 1e4, -1e4)
    else:
        c["x"] *= 1e4
    got, expected = _train_and_reference(c, dtype)
    assert all(np.isfinite(a).all() for a in got)
    assert np.abs(got[0]).max() <= 1.0
    for k, (a, r) in enumerate(zip(got, expected)):
        assert_close(a, r, dtype, str(k))


def test_long_sequence_float32_stays_near_float64(isa: str) -> None:
    """T = 10,000 steps in float32 against the float64 reference: errors do not grow with T.
    The README states the bound: 1e-5 on y, h_n and c_n; 5e-5 of the largest gradient."""
    c = make_case(10_000, 2, 4, 16, seed=7)
    got, expected = _train_and_reference(c, np.float32)
    errs = [float(np.abs(a - r).max()) / (1.0 if k < 3 else float(np.abs(r).max()))
            for k, (a, r) in enumerate(zip(got, expected))]
    RECORD.set(f"T=10000 float32 vs float64, {isa}: outputs, gradients (relative)",
               f"{max(errs[:3]):.1e}, {max(errs[3:]):.1e}")
    assert max(errs[:3]) <= 1e-5 and max(errs[3:]) <= 5e-5, errs


@pytest.mark.parametrize("threads", [1, 2, 3])
# big enough for the parallel paths; the second has fewer panels of units than threads, and its
# projection is split by rows as well (forward_fast)
@pytest.mark.parametrize("shape", [(20, 64, 32, 48), (4, 40, 600, 20)])
def test_thread_count(threads: int, shape: tuple[int, int, int, int], isa: str) -> None:
    c = make_case(*shape, np.float32, seed=4)
    old = lstmx.get_num_threads()
    try:
        lstmx.set_num_threads(threads)
        assert lstmx.get_num_threads() == threads
        y, hn, cn, tape = lstmx.lstm_train(**c)
        g = lstmx.lstm_backward(tape, np.ones_like(y))
    finally:
        lstmx.set_num_threads(old)
    c64 = {k: v.astype(np.float64) for k, v in c.items()}
    yr, _, _, cache = R.lstm_forward(**c64)
    assert_close(y, yr, np.float32)
    gr = R.lstm_backward(cache, np.ones_like(yr))
    assert_close(g.dw_hh, gr["dw_hh"], np.float32)


def test_show_config(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = lstmx.config()
    assert cfg["version"] == lstmx.__version__
    assert str(cfg["eigen"]).startswith("3.")
    lstmx.show_config()
    out = capsys.readouterr().out
    assert "eigen" in out and "threads" in out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,batch_first", [((6, 3, 17, 33), True), ((20, 64, 32, 100), False),
                                               ((3, 5, 300, 500), False),
                                               ((4, 40, 600, 20), True),
                                               ((5, 20, 7, 8), False)])
def test_bitwise_identical_across_thread_counts_and_calls(dtype: Any, shape: tuple[int, ...],
                                                          batch_first: bool, isa: str) -> None:
    """Outputs and gradients of every call (inference, training, backward, the cell step) are
    bitwise the same with 1, 2 and 3 threads and from call to call, at every ISA level. (H = 8,
    B = 20: the steps split by blocks of entries, so one thread's 8 rows go in tiles of 4 + 4
    where another count of threads cuts them 6 + 2.)"""
    c = make_case(*shape, dtype=dtype, seed=6, batch_first=batch_first)
    x0 = c["x"][:, 0] if batch_first else c["x"][0]
    old = lstmx.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3, 2, 1):
            lstmx.set_num_threads(threads)
            y, hn, cn, tape = lstmx.lstm_train(**c, batch_first=batch_first)
            g = lstmx.lstm_backward(tape, np.full_like(y, 0.3), hn, cn)
            yi, hi, ci = lstmx.lstm(**c, batch_first=batch_first)
            h1, c1, ctape = lstmx.lstm_cell_train(x0, c["w_ih"], c["w_hh"], c["b_ih"],
                                                  c["b_hh"], c["h0"], c["c0"])
            g1 = lstmx.lstm_cell_backward(ctape, h1, c1)
            outs.append((y, hn, cn, *g, yi, hi, ci, h1, c1, *g1))
    finally:
        lstmx.set_num_threads(old)
    RECORD.set("thread counts checked bitwise (per ISA, dtype, shape)", "1, 2, 3, 2, 1")
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_array_equal(a, b)


def test_isa_levels_reported_and_switchable() -> None:
    cfg = lstmx.config()
    assert cfg["isa"] in ISAS and ISAS[-1] in ("sse2", "generic")
    with pytest.raises(ValueError, match="isa: 'avx9000' is not available here"):
        _core.set_isa("avx9000")


@pytest.mark.parametrize("want", ["sse2", "bogus"])
def test_isa_environment_override(want: str) -> None:
    code = "import lstmx; c = lstmx.config(); print(c['isa'], c.get('isa_note', ''))"
    env = dict(os.environ, LSTMX_ISA=want)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    if want in ISAS:
        assert out.split()[0] == want
    else:
        assert out.split()[0] == ISAS[0] and "LSTMX_ISA=bogus is not available" in out


# Error bounds of the fast kernels' vectorised activations, in units in the last place (ulp)
# against float64 math; the float64 bound is looser because the float64 reference has its own
# rounding error.
ULP_BOUND = {np.float32: {"sigmoid": 2.5, "tanh": 1.5}, np.float64: {"sigmoid": 4.0, "tanh": 2.0}}


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_error_bound(dtype: Any, isa: str) -> None:
    g = np.geomspace(1e-30, 40, 40001)
    x = np.concatenate([np.linspace(-40, 40, 80001), g, -g]).astype(dtype)
    sig, th = _core._activations(x)
    x64 = x.astype(np.float64)
    ref = {"sigmoid": 1.0 / (1.0 + np.exp(-x64)), "tanh": np.tanh(x64)}
    for name, got in (("sigmoid", sig), ("tanh", th)):
        r = ref[name]
        ulp = np.spacing(np.abs(r).astype(dtype)).astype(np.float64)
        err = float(np.max(np.abs(got.astype(np.float64) - r) / ulp))
        assert err <= ULP_BOUND[dtype][name], (name, err)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_stable_for_any_input(dtype: Any, isa: str) -> None:
    x = np.array([-1e30, -1e4, -800, -89, 0.0, -0.0, 89, 800, 1e4, 1e30, np.inf, -np.inf],
                 dtype=dtype)
    sig, th = _core._activations(x)
    assert np.all(np.isfinite(sig)) and np.all(np.isfinite(th))
    np.testing.assert_array_equal(sig[[0, 1, 2, 11]], 0)
    np.testing.assert_array_equal(sig[[7, 8, 9, 10]], 1)
    np.testing.assert_array_equal(th, np.sign(x) * (np.abs(x) > 1))
    assert np.all(np.isnan(_core._activations(np.array([np.nan], dtype=dtype))[0]))
