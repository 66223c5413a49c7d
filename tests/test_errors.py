"""Bad input gets a clear Python exception naming the argument, never a crash."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import RECORD, assert_close, make_case
from entry_points import ENTRIES, NO_ARGS, Entry, arrays
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import lstmx
from lstmx import _core
from lstmx import reference as R

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
    with pytest.raises(ValueError, match=r"h: expected shape \[B, H\] = \(3, 6\)"):
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
    misaligned = np.empty(c["x"].nbytes + 1, np.uint8)[1:].view(np.float32).reshape(4, 3, 5)
    with pytest.raises(ValueError, match="x: expected an aligned array"):
        _core.forward(misaligned, c["w_ih"], c["w_hh"], None, None, None, False, False)
    with pytest.raises(ValueError, match=r"h0: expected shape \(3, 6\), got \(3, 5\)"):
        _core.forward(c["x"], c["w_ih"], c["w_hh"], None, c["h0"][:, :5].copy(), None, False,
                      False)


def test_core_y_out_misuse() -> None:
    """_core.forward's y_out (the layer's halves of a bidirectional y) and the strided dy its
    cache then reads: bad ones get a clear error, never a write out of bounds."""
    c = case()  # T, B, H = 4, 3, 6
    args = (c["x"], c["w_ih"], c["w_hh"], None, c["h0"], c["c0"], False)

    def fwd(out: Any, training: bool = False) -> Any:
        return _core.forward(*args, training, y_out=out)

    with pytest.raises(TypeError, match="y_out: expected a numpy array of float32"):
        fwd(np.zeros((4, 3, 6)))
    with pytest.raises(ValueError, match=r"y_out: expected shape \(4, 3, 6\), got \(4, 3, 5\)"):
        fwd(np.zeros((4, 3, 5), np.float32))
    ro = np.zeros((4, 3, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="y_out: expected a writeable array"):
        fwd(ro)
    for bad in (np.zeros((4, 3, 12), np.float32)[..., ::2],  # elements not contiguous
                np.zeros((3, 4, 6), np.float32).transpose(1, 0, 2),  # rows out of order
                np.zeros((4, 3, 6, 2), np.float32)[..., 0]):
        with pytest.raises(ValueError, match="y_out: expected rows of 6 contiguous elements"):
            fwd(bad)
    base = np.zeros(4 * 3 * 12, np.float32)  # x in the first 60 elements, y_out over them
    x = base[:60].reshape(4, 3, 5)
    x[:] = c["x"]
    for out in (base.reshape(4, 3, 12)[..., 6:], base.reshape(4, 3, 12)[..., :6]):
        with pytest.raises(ValueError, match="y_out: shares memory with an input"):
            _core.forward(x, c["w_ih"], c["w_hh"], None, None, None, False, False, y_out=out)
    wide = np.zeros((4, 3, 12), np.float32)
    y, *_, cache = fwd(wide[..., 6:], training=True)
    assert np.shares_memory(y, wide)
    assert cache.y_stride == 12
    with pytest.raises(ValueError, match="dy: expected rows 12 elements apart"):
        _core.backward(cache, np.zeros((4, 3, 6), np.float32), None, None, False)
    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 3, 6\)"):
        _core.backward(cache, np.zeros((4, 3, 12), np.float32), None, None, False)


def test_core_drop_misuse() -> None:
    """_core.forward's fused dropout after a pass (drop, y_drop: laid out as y, training only):
    bad ones get a clear error; good ones give y * drop, and backward dy * drop."""
    c = case()  # T, B, H = 4, 3, 6
    args = (c["x"], c["w_ih"], c["w_hh"], None, c["h0"], c["c0"], False)
    mask = np.random.default_rng(1).choice([0.0, 2.0], (4, 3, 6)).astype(np.float32)

    def fwd(drop: Any, y_drop: Any, training: bool = True) -> Any:
        return _core.forward(*args, training, drop=drop, y_drop=y_drop)

    with pytest.raises(ValueError, match="drop: training only"):
        fwd(mask, np.zeros_like(mask), training=False)
    with pytest.raises(TypeError, match="drop: expected a numpy array of float32"):
        fwd(None, np.zeros_like(mask))
    with pytest.raises(ValueError, match=r"y_drop: expected shape \(4, 3, 6\), got \(4, 3, 5\)"):
        fwd(mask, np.zeros((4, 3, 5), np.float32))
    with pytest.raises(ValueError, match="drop: expected rows 6 elements apart, as y's"):
        fwd(np.zeros((4, 3, 12), np.float32)[..., :6], np.zeros_like(mask))
    with pytest.raises(ValueError, match="y_drop: shares memory with y or an input"):
        fwd(mask, mask)
    base = np.zeros(4 * 3 * 6, np.float32)  # x in the first 60 elements, y_drop over them
    x = base[:60].reshape(4, 3, 5)
    x[:] = c["x"]
    with pytest.raises(ValueError, match="y_drop: shares memory with y or an input"):
        _core.forward(x, *args[1:], True, drop=mask, y_drop=base.reshape(4, 3, 6))
    w_hh = c["w_hh"].copy()  # [24, 6]: y_drop over its second half
    with pytest.raises(ValueError, match="y_drop: shares memory with y or an input"):
        _core.forward(c["x"], c["w_ih"], w_hh, None, None, None, False, True, drop=mask,
                      y_drop=w_hh[12:].reshape(4, 3, 6))
    out = np.zeros((4, 3, 6), np.float32)
    with pytest.raises(ValueError, match="drop: shares memory with y"):
        _core.forward(*args, True, y_out=out, drop=out, y_drop=np.zeros_like(mask))
    y_drop = np.full_like(mask, np.nan)
    y, *_, cache = fwd(mask, y_drop)
    np.testing.assert_array_equal(y_drop, y * mask)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    y2, *_, plain = _core.forward(*args, True)
    np.testing.assert_array_equal(y2, y)
    for a, b in zip(_core.backward(cache, dy, None, None, False)[:6],
                    _core.backward(plain, dy * mask, None, None, False)[:6]):
        np.testing.assert_array_equal(a, b)


def test_core_dx_add_misuse() -> None:
    """_core.backward's dx_add (a bidirectional layer's second pass adds its dx into the
    first's): bad ones get a clear error; a good one gets dx added, padding untouched."""
    c = case()  # T, B, I = 4, 3, 5
    cache = _core.forward(c["x"], c["w_ih"], c["w_hh"], None, None, None, False, True,
                          lengths=np.array([4, 0, 2]))[3]
    dy = np.random.default_rng(3).standard_normal((4, 3, 6)).astype(np.float32)

    def bwd(dx_add: Any) -> Any:
        return _core.backward(cache, dy, None, None, False, dx_add=dx_add)

    with pytest.raises(TypeError, match="dx_add: expected a numpy array of float32"):
        bwd(np.zeros((4, 3, 5)))
    for bad in (np.zeros((4, 3, 4), np.float32), np.zeros((3, 4, 5), np.float32).swapaxes(0, 1),
                np.zeros((4, 3, 10), np.float32)[..., ::2]):
        with pytest.raises(ValueError, match=r"dx_add: expected a writeable, aligned, "
                                             r"C-contiguous array of shape \(4, 3, 5\)"):
            bwd(bad)
    ro = np.zeros((4, 3, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dx_add: expected a writeable"):
        bwd(ro)
    base = np.zeros(4 * 3 * 6, np.float32)
    with pytest.raises(ValueError, match="dx_add: shares memory with dy"):
        _core.backward(cache, base.reshape(4, 3, 6), None, None, False,
                       dx_add=base[:60].reshape(4, 3, 5))
    first = np.random.default_rng(4).standard_normal((4, 3, 5)).astype(np.float32)
    expected = first + _core.backward(cache, dy, None, None, False)[0]
    total = first.copy()
    assert bwd(total)[0] is total
    np.testing.assert_allclose(total, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(total[2:, 2], first[2:, 2])  # padding: nothing added
    np.testing.assert_array_equal(total[:, 1], first[:, 1])
    rng = np.random.default_rng(5)
    for I, naive in ((70, False), (70, True), (5, True)):  # dx by a packed GEMM, and naive
        x = rng.standard_normal((4, 3, I)).astype(np.float32)
        w_ih = rng.standard_normal((24, I)).astype(np.float32) * 0.2
        cache = _core.forward(x, w_ih, c["w_hh"], None, None, None, False, True, naive)[3]
        dx = _core.backward(cache, dy, None, None, naive)[0]
        first_i = rng.standard_normal((4, 3, I)).astype(np.float32)
        total = first_i.copy()
        _core.backward(cache, dy, None, None, naive, dx_add=total)
        np.testing.assert_allclose(total, first_i + dx, rtol=1e-6, atol=1e-6, err_msg=str(I))


@settings(max_examples=100, deadline=None)
@given(T=st.integers(0, 4), B=st.integers(0, 3), I=st.integers(0, 4), H=st.integers(1, 5),
       dI=st.integers(-1, 1), dH=st.integers(-1, 1), dB=st.integers(-1, 1),
       batch_first=st.booleans(), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_fuzz_shapes(T: int, B: int, I: int, H: int, dI: int, dH: int, dB: int,
                     batch_first: bool, seed: int, dtype: Any) -> None:
    """Random shapes (0-sized too), sometimes mismatched: the right answer or a ValueError."""
    RECORD.add("fuzz cases (random shapes)")
    c = make_case(T, B, I, H, dtype, seed=seed, batch_first=batch_first)
    if dI:
        c["w_ih"] = np.zeros((4 * H, max(0, I + dI)), dtype)
    if dH:
        c["w_hh"] = np.zeros((4 * H, max(0, H + dH)), dtype)
    if dB:
        c["h0"] = np.zeros((max(0, B + dB), H), dtype)
    mismatched = (dI and max(0, I + dI) != I) or (dH and max(0, H + dH) != H) or \
        (dB and max(0, B + dB) != B)
    if mismatched:
        with pytest.raises(ValueError, match=r"^(w_ih|w_hh|h0|c0|b_ih): expected shape"):
            lstmx.lstm_train(**c, batch_first=batch_first)
        return
    y, hn, cn, tape = lstmx.lstm_train(**c, batch_first=batch_first)
    ones = [np.ones_like(a) for a in (y, hn, cn)]
    g = lstmx.lstm_backward(tape, *ones)
    c64 = {k: v.astype(np.float64) for k, v in c.items()}
    *out, cache = R.lstm_forward(**c64, batch_first=batch_first)
    gr = R.lstm_backward(cache, *(a.astype(np.float64) for a in ones))
    for name, a, r in zip(("y", "h_n", "c_n"), (y, hn, cn), out):
        assert_close(a, r, dtype, name)
    for k in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih"):
        assert_close(getattr(g, k), gr[k], dtype, k)


# ---- every public entry point, fuzzed (see entry_points.py to add one) ------------------------

ALLOWED = (TypeError, ValueError, MemoryError)
NAMES = {n for e in ENTRIES for n in e.kinds} | {"h0", "c0", "x", "w_ih", "w_hh"}

# Invalid values by kind of argument (arrays are mutated by BAD_ARRAY instead).
BAD: dict[str, list[Any]] = {
    "size": [0, -1, -2**63, 2**40, 2**70, 3.5, "3", None, True, [3], np.float64(3.0)],
    "count": [-1, -2**63, 2**70, 3.5, "3", None, True, [3]],
    "flag": ["yes", None, 2, -1, 0.5, np.array([True, False]), [True], object()],
    "probability": [-0.1, 1.5, float("nan"), float("inf"), "0.1", None, [0.1], True],
    "dtype": ["foo", np.int32, np.complex128, np.float16, object(), 3, bool, "U3"],
    "seed": ["abc", -1, 1.5, object(), [-1]],
    "object": ["abc", 3, 1.5, object(), [], np.zeros(3), {"a": 1}],
    "threshold": [0, -1.0, float("nan"), "1", True, [1.0], object()],
    "real": [float("nan"), float("inf"), "1", True, [1.0], object()],
    "lengths": ["abc", 1.5, True, object(), [[1, 2]], [1.5, 2.0], [-1, 2], {"a": 1}],
}
BAD_DTYPES = [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object,
              np.float16, "U3", "big-endian"]


def _astype(a: np.ndarray, dt: Any) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder(">") if dt == "big-endian" else dt)


# Array mutations that must fail, by name: f(a) -> the bad value, and whether the error must
# name this very argument (a bad shape may be reported by the argument it fails to match).
BAD_ARRAY: dict[str, tuple[Callable[[np.ndarray], Any], bool]] = {
    **{f"dtype {dt}": ((lambda a, dt=dt: _astype(a, dt)), True) for dt in BAD_DTYPES},
    "None": (lambda a: None, True),
    "string": (lambda a: "abc", True),
    "object": (lambda a: object(), True),
    "dict": (lambda a: {"a": 1}, True),
    "ragged list": (lambda a: [[1.0], [1.0, 2.0]], True),
    "list of strings": (lambda a: [["a", "b"]], True),
    "scalar": (lambda a: 0.5, False),
    "one more axis": (lambda a: np.stack([a, a]), False),
    "one axis fewer": (lambda a: a[0], False),
    "absurd size": (lambda a: np.broadcast_to(a[:1], (2**40,) + a.shape[1:]), False),
}
ANY_SHAPE_BAD = [k for k, (_, must) in BAD_ARRAY.items() if must]  # not the shape changes


def _misaligned(a: np.ndarray) -> np.ndarray:
    buf = np.empty(a.nbytes + 1, np.uint8)[1:]
    out = buf.view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def _strided(a: np.ndarray) -> np.ndarray:
    big = np.zeros(a.shape + (2,), a.dtype)
    big[..., 0] = a
    return big[..., 0]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


def _torch() -> Any:
    try:
        import torch
        return torch
    except ImportError:  # torch is optional outside CI: then no tensor forms
        return None


# Mutations that keep the value: the result must be bitwise the same.
SAME_ARRAY: dict[str, Callable[[np.ndarray], Any]] = {
    "list": lambda a: a.tolist(),
    "fortran": np.asfortranarray,
    "strided": _strided,
    "reversed strides": lambda a: np.flip(np.flip(a, 0).copy(), 0),
    "read-only": _readonly,
    "misaligned": _misaligned,
    **({"torch": lambda a: _torch().from_numpy(a.copy()),
        "torch, non-contiguous": lambda a: _torch().from_numpy(_strided(a)),
        "torch, requires grad": lambda a: _torch().from_numpy(a.copy()).requires_grad_()}
       if _torch() else {}),
}
SAME: dict[str, list[Callable[[Any], Any]]] = {
    "size": [np.int64, np.int32],
    "count": [np.int64],
    "flag": [np.bool_, int],
    "dtype": [np.dtype, lambda d: np.dtype(d).name, lambda d: np.dtype(d).type],
    "lengths": [np.asarray, lambda a: np.asarray(a, np.int32), tuple],
}


def _draw_case(data: st.DataObject, entry: Entry) -> tuple[dict[str, Any], str]:
    dtype = np.dtype(data.draw(st.sampled_from([np.float32, np.float64]), label="dtype"))
    kwargs = entry.make(dtype)
    arg = data.draw(st.sampled_from(sorted(entry.kinds)), label="argument")
    return kwargs, arg


def _check_message(err: BaseException, arg: str, must_name_arg: bool) -> None:
    msg = str(err)
    head = msg.split(":")[0]
    named = {n for n in re.split(r"[\s,\[\]']+", head) if n}
    assert named & NAMES, f"the message does not start with an argument's name: {msg!r}"
    if must_name_arg:
        assert re.search(rf"\b{re.escape(arg)}\b", msg), f"{arg} is not named in {msg!r}"


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_bad_values(entry: Entry, data: st.DataObject) -> None:
    """A bad value of any argument: TypeError, ValueError or MemoryError naming it."""
    kwargs, arg = _draw_case(data, entry)
    kind = entry.kinds[arg]
    must_name = True
    if kind.endswith("array"):
        names = ANY_SHAPE_BAD if kind == "any-shape array" else list(BAD_ARRAY)
        if arg in entry.optional:
            names = [n for n in names if n != "None"]
        how = data.draw(st.sampled_from(names), label="mutation")
        f, must_name = BAD_ARRAY[how]
        kwargs[arg] = f(kwargs[arg])
    else:
        values = [v for v in BAD[kind] if not (v is None and arg in entry.optional)]
        values += [f(kwargs) for f in entry.bad.get(arg, [])]
        kwargs[arg] = data.draw(st.sampled_from(values), label="value")
    RECORD.add("fuzz cases (bad values)")
    allowed = ALLOWED + ((NotImplementedError,) if arg in entry.unimplemented else ())
    with pytest.raises(allowed) as err:
        entry.call(**kwargs)
    _check_message(err.value, arg, must_name)


def _same_forms(kind: str) -> dict[str, Callable[[Any], Any]]:
    if kind.endswith("array"):
        return {k: f for k, f in SAME_ARRAY.items()
                if not (kind == "any-shape array" and k == "list")}  # a list is float64
    return {f"{kind} {i}": f for i, f in enumerate(SAME.get(kind, []))}


@pytest.mark.parametrize("entry", [e for e in ENTRIES
                                   if any(_same_forms(k) for k in e.kinds.values())], ids=repr)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_same_values(entry: Entry, data: st.DataObject) -> None:
    """The same values in another form (a list, any strides, read-only, misaligned, a torch
    tensor, numpy scalars): bitwise the same result."""
    kwargs, arg = _draw_case(data, entry)
    hows = _same_forms(entry.kinds[arg])
    assume(hows and kwargs[arg] is not None)
    expected = arrays(entry.call(**kwargs))
    how = data.draw(st.sampled_from(sorted(hows)), label="form")
    kwargs[arg] = hows[how](kwargs[arg])
    RECORD.add("fuzz cases (same values, other forms)")
    got = arrays(entry.call(**kwargs))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("name,fn", NO_ARGS, ids=[n for n, _ in NO_ARGS])
def test_entry_points_without_arguments(name: str, fn: Callable[[], Any],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = fn()
    assert out is None or arrays(out)
    with pytest.raises(TypeError):
        fn(1)  # type: ignore[call-arg]


ABSURD = [  # (T, B, I, H): T*B*4H past 2**31 and terabytes; and past 2**63 (zero-sized x)
    (2**22, 2**12, 1, 2**6),
    (2**40, 2**20, 1, 1),
    (2**30, 2**30, 0, 4),
]


@pytest.mark.parametrize("fn,T,B,I,H", [(fn, *s) for s in ABSURD for fn in
                                         ("lstm", "lstm_train", "reference", "layer", "cell")
                                         if s[2] or fn != "layer"])  # input_size >= 1
def test_absurd_sizes_are_refused_before_allocating(fn: str, T: int, B: int, I: int,
                                                    H: int) -> None:
    """Broadcast views (no memory) of absurd sizes: a MemoryError naming x, at once."""
    x = np.empty((T, B, 0), np.float32) if I == 0 else \
        np.broadcast_to(np.float32(0.5), (T, B, I))
    w_ih = np.broadcast_to(np.float32(0.1), (4 * H, I))
    w_hh = np.broadcast_to(np.float32(0.1), (4 * H, H))
    call = {"lstm": lambda: lstmx.lstm(x, w_ih, w_hh),
            "lstm_train": lambda: lstmx.lstm_train(x, w_ih, w_hh),
            "reference": lambda: R.lstm_forward(x, w_ih, w_hh),
            "layer": lambda: lstmx.LSTM(I, H)(x),
            "cell": lambda: lstmx.lstm_cell(x.reshape(T * B, I), w_ih, w_hh)}[fn]
    t0 = time.perf_counter()
    with pytest.raises(MemoryError, match=r"^x(, w_ih, w_hh)?: .* would need .* GiB") as err:
        call()
    assert time.perf_counter() - t0 < 1.0, "refused only after trying"
    _check_message(err.value, "x", True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_core_refuses_overflowing_sizes(dtype: Any) -> None:
    """lstmx._core checks too: element counts past 2**63 are a MemoryError, not a wrap-around."""
    x = np.empty((2**29, 2**30, 0), dtype)  # zero-sized: no memory, T*B = 2**59
    w = np.zeros((16, 4), dtype)
    with pytest.raises(MemoryError, match="x, w_hh: T = 536870912, B = 1073741824"):
        _core.forward(x, np.zeros((16, 0), dtype), w, None, None, None, False, True)
