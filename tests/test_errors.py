"""Bad input gets a clear Python exception naming the argument, never a crash."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import make_case
from hypothesis import given, settings
from hypothesis import strategies as st

import lstmx
from lstmx import _core

ARGS = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"]


def case() -> dict[str, Any]:
    return make_case(T=4, B=3, I=5, H=6, dtype=np.float32)  # H = 6: 4H = 24


@pytest.mark.parametrize("fn", [lstmx.lstm, lstmx.lstm_train])
@pytest.mark.parametrize("arg,value,pattern", [
    ("x", np.zeros((4, 5), np.float32), r"x: expected a 3-D array \[T, B, I\], got a 2-D array "
                                        r"of shape \(4, 5\)"),
    ("x", np.zeros((4, 3, 7), np.float32), r"w_ih: expected shape \[4H, I\] = \(24, 7\), got "
                                           r"\(24, 5\)"),
    ("w_ih", np.zeros((24, 4), np.float32), r"w_ih: expected shape \[4H, I\] = \(24, 5\), got "
                                            r"\(24, 4\)"),
    ("w_ih", np.zeros((24,), np.float32), r"w_ih: expected shape \[4H, I\] = \(24, 5\), got "
                                          r"\(24,\)"),
    ("w_hh", np.zeros((24, 5), np.float32), r"w_hh: expected shape \[4H, H\], got \(24, 5\)"),
    ("w_hh", np.zeros((6, 6, 4), np.float32), r"w_hh: expected shape \[4H, H\], got \(6, 6, 4\)"),
    ("b_ih", np.zeros(23, np.float32), r"b_ih: expected shape \[4H\] = \(24,\), got \(23,\)"),
    ("b_hh", np.zeros((1, 24), np.float32), r"b_hh: expected shape \[4H\] = \(24,\), got "
                                            r"\(1, 24\)"),
    ("h0", np.zeros((2, 6), np.float32), r"h0: expected shape \[B, H\] = \(3, 6\), got \(2, 6\)"),
    ("c0", np.zeros((1, 3, 6), np.float32), r"c0: expected shape \[B, H\] = \(3, 6\), got "
                                            r"\(1, 3, 6\)"),
])
def test_wrong_shapes(fn: Any, arg: str, value: Any, pattern: str) -> None:
    c = case()
    c[arg] = value
    with pytest.raises(ValueError, match=pattern):
        fn(**c)


@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128, object,
                                   np.float16, "U3"])
def test_bad_dtypes(arg: str, dtype: Any) -> None:
    c = case()
    c[arg] = c[arg].astype(dtype) if dtype is not object else c[arg].astype(object)
    with pytest.raises(TypeError, match=f"^{arg}: expected float32 or float64 data, got dtype"):
        lstmx.lstm(**c)


@pytest.mark.parametrize("arg", ARGS[1:])
def test_mixed_float_dtypes(arg: str) -> None:
    c = case()
    c[arg] = c[arg].astype(np.float64)
    with pytest.raises(TypeError, match=f"{arg}: dtype float64 does not match x's dtype float32"):
        lstmx.lstm(**c)


@pytest.mark.parametrize("value", [None, "abc", 3.0, [[1.0, 2.0], [3.0]], object()])
def test_not_arrays(value: Any) -> None:
    c = case()
    c["x"] = value
    with pytest.raises((TypeError, ValueError), match="^x: "):
        lstmx.lstm(**c)


def test_backward_bad_arguments() -> None:
    c = case()
    y, hn, cn, tape = lstmx.lstm_train(**c)
    with pytest.raises(TypeError, match="tape: expected an lstmx.Tape, got dict"):
        lstmx.lstm_backward({}, y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"dy: expected shape \[T, B, H\] = \(4, 3, 6\), got "
                                         r"\(3, 4, 6\)"):
        lstmx.lstm_backward(tape, np.zeros((3, 4, 6), np.float32))
    with pytest.raises(TypeError, match="dy: dtype float64 does not match"):
        lstmx.lstm_backward(tape, y.astype(np.float64))
    with pytest.raises(TypeError, match="dy: expected float32 or float64 data, got dtype int64"):
        lstmx.lstm_backward(tape, y.astype(np.int64))
    with pytest.raises(ValueError, match=r"dh_n: expected shape \[B, H\] = \(3, 6\), got \(6,\)"):
        lstmx.lstm_backward(tape, y, np.zeros(6, np.float32))
    with pytest.raises(ValueError, match=r"dc_n: expected shape \[B, H\]"):
        lstmx.lstm_backward(tape, y, None, np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match="tape: this tape comes from lstm_train; pass it to "
                                         "lstm_backward"):
        lstmx.lstm_cell_backward(tape, hn)
    _, _, ctape = lstmx.lstm_cell_train(c["x"][0], c["w_ih"], c["w_hh"])
    with pytest.raises(ValueError, match="comes from lstm_cell_train"):
        lstmx.lstm_backward(ctape, y)


def test_cell_bad_arguments() -> None:
    c = case()
    with pytest.raises(ValueError, match=r"x: expected a 2-D array \[B, I\], got a 3-D array"):
        lstmx.lstm_cell(c["x"], c["w_ih"], c["w_hh"])
    with pytest.raises(ValueError, match=r"h0: expected shape \[B, H\] = \(3, 6\)"):
        lstmx.lstm_cell(c["x"][0], c["w_ih"], c["w_hh"], h=np.zeros((6,), np.float32))
    with pytest.raises(ValueError, match=r"w_ih: expected shape \[4H, I\] = \(24, 5\)"):
        lstmx.lstm_cell(c["x"][0], c["w_ih"][:, :4], c["w_hh"])
    _, _, tape = lstmx.lstm_cell_train(c["x"][0], c["w_ih"], c["w_hh"])
    with pytest.raises(ValueError, match=r"dh: expected shape \[B, H\] = \(3, 6\), got \(1, 3, 6\)"):
        lstmx.lstm_cell_backward(tape, np.zeros((1, 3, 6), np.float32))


def test_threads_bad_arguments() -> None:
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n: expected a positive int"):
            lstmx.set_num_threads(bad)  # type: ignore[arg-type]


def test_impossible_allocation_is_refused() -> None:
    # Broadcast views cost no memory, but T*B = 2**30 rows with H = 4096 would need ~80 TiB.
    x = np.broadcast_to(np.zeros((1, 1, 1), np.float32), (2**20, 2**10, 1))
    w_hh = np.broadcast_to(np.zeros((1, 1), np.float32), (4 * 4096, 4096))
    w_ih = np.broadcast_to(np.zeros((1, 1), np.float32), (4 * 4096, 1))
    with pytest.raises(MemoryError, match="GiB"):
        lstmx.lstm(x, w_ih, w_hh)


def test_core_rejects_misuse_without_crashing() -> None:
    c = case()
    with pytest.raises(TypeError, match="x"):
        _core.forward(c["x"].astype(np.int32), c["w_ih"], c["w_hh"], None, None, None, False,
                      False)
    with pytest.raises(TypeError, match="w_ih"):
        _core.forward(c["x"], c["w_ih"].astype(np.float64), c["w_hh"], None, None, None, False,
                      False)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.forward(c["x"], np.asfortranarray(c["w_ih"]), c["w_hh"], None, None, None, False,
                      False)
    with pytest.raises(ValueError, match=r"h0: expected shape \(3, 6\), got \(3, 5\)"):
        _core.forward(c["x"], c["w_ih"], c["w_hh"], None, c["h0"][:, :5].copy(), None, False,
                      False)


finite = st.floats(-10, 10, width=32)


@settings(max_examples=60, deadline=None)
@given(T=st.integers(0, 4), B=st.integers(0, 3), I=st.integers(0, 4), H=st.integers(1, 5),
       dI=st.integers(-1, 1), dH=st.integers(-1, 1), dB=st.integers(-1, 1),
       batch_first=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzz_shapes(T: int, B: int, I: int, H: int, dI: int, dH: int, dB: int,
                     batch_first: bool, seed: int) -> None:
    """Random, sometimes mismatched shapes: the right answer or a ValueError, never a crash."""
    c = make_case(T, B, I, H, np.float32, seed=seed, batch_first=batch_first)
    if dI:
        c["w_ih"] = np.zeros((4 * H, max(0, I + dI)), np.float32)
    if dH:
        c["w_hh"] = np.zeros((4 * H, max(0, H + dH)), np.float32)
    if dB:
        c["h0"] = np.zeros((max(0, B + dB), H), np.float32)
    mismatched = (dI and max(0, I + dI) != I) or (dH and max(0, H + dH) != H) or \
        (dB and max(0, B + dB) != B)
    if mismatched:
        with pytest.raises(ValueError, match=r"^(w_ih|w_hh|h0|c0|b_ih): expected shape"):
            lstmx.lstm_train(**c, batch_first=batch_first)
    else:
        y, hn, cn, tape = lstmx.lstm_train(**c, batch_first=batch_first)
        g = lstmx.lstm_backward(tape, np.ones_like(y), np.ones_like(hn), np.ones_like(cn))
        assert g.dx.shape == c["x"].shape and np.isfinite(g.dw_hh).all()
