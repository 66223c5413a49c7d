"""lstmx's fused variants (lengths, reverse, projection, peepholes, clip, input_forget, zoneout,
recurrent dropout, layer norm) against the NumPy reference, at every ISA, forward and
backward."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import DTYPES, assert_close

import lstmx
from lstmx import _core
from lstmx import functional as F
from lstmx import reference as R

T, B, I, H, P = 7, 5, 6, 19, 7
LENGTHS = [7, 0, 3, 7, 1]  # unsorted, a zero, a one, ties

#: name -> keyword arguments of lstmx.lstm_train (arrays are filled in by _case)
VARIANTS: dict[str, dict[str, Any]] = {
    "lengths": dict(lengths=LENGTHS),
    "reverse": dict(reverse=True),
    "lengths+reverse": dict(lengths=LENGTHS, reverse=True),
    "proj": dict(w_hr=True),
    "peephole": dict(peephole=True),
    "clip": dict(clip=0.6),
    "input_forget": dict(input_forget=True),
    "zoneout": dict(zoneout_h=0.3, zoneout_c=0.4),
    "recurrent_dropout": dict(recurrent_dropout=0.35),
    "all": dict(lengths=LENGTHS, reverse=True, w_hr=True, peephole=True, clip=0.8,
                input_forget=True, zoneout_h=0.2, zoneout_c=0.25, recurrent_dropout=0.3),
    "layer_norm": dict(layer_norm=True),
    "layer_norm+all": dict(layer_norm=True, lengths=LENGTHS, reverse=True, w_hr=True,
                           peephole=True, zoneout_h=0.2, zoneout_c=0.25, recurrent_dropout=0.3),
}


def _case(variant: dict[str, Any], dtype: Any, batch_first: bool,
          seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays, keyword arguments) of one call."""
    rng = np.random.default_rng(seed)
    R_ = P if variant.get("w_hr") else H

    def r(*shape: int, s: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(dtype)

    arrays = dict(x=r(B, T, I) if batch_first else r(T, B, I), w_ih=r(4 * H, I, s=0.5),
                  w_hh=r(4 * H, R_, s=0.5), b_ih=r(4 * H, s=0.5), b_hh=r(4 * H, s=0.5),
                  h0=r(B, R_), c0=r(B, H))
    kw = dict(variant)
    if kw.get("w_hr"):
        kw["w_hr"] = r(P, H, s=0.5)
    if kw.get("peephole"):
        kw["peephole"] = r(3, H, s=0.5)
    if kw.get("layer_norm"):  # gains near 1, the cell's bias near 0
        kw["layer_norm"] = (1 + r(4 * H, s=0.2), 1 + r(4 * H, s=0.2), 1 + r(H, s=0.2),
                            r(H, s=0.2))
    if "lengths" in kw:
        kw["lengths"] = np.array(kw["lengths"])
    return arrays, kw


def _reference(arrays: dict[str, Any], kw: dict[str, Any], batch_first: bool, training: bool,
               seed: int = 0, stream: int = 0) -> tuple[Any, ...]:
    a64 = {k: v.astype(np.float64) for k, v in arrays.items()}
    k64 = {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
           for k, v in kw.items()}
    if "layer_norm" in k64:
        k64["layer_norm"] = tuple(a.astype(np.float64) for a in k64["layer_norm"])
    if not training:
        k64.pop("recurrent_dropout", None)
    return R.lstm_forward(**a64, batch_first=batch_first, training=training, seed=seed,
                          stream_base=stream, **k64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_matches_reference(name: str, batch_first: bool, dtype: Any, isa: str) -> None:
    arrays, kw = _case(VARIANTS[name], dtype, batch_first)
    # inference: zoneout is its expectation, recurrent dropout is off
    inf_kw = {k: v for k, v in kw.items() if k != "recurrent_dropout"}
    y, hn, cn = F.lstm(**arrays, batch_first=batch_first, **inf_kw)
    yr, hr, cr, _ = _reference(arrays, kw, batch_first, training=False)
    for a, e, what in ((y, yr, "y"), (hn, hr, "h_n"), (cn, cr, "c_n")):
        assert_close(a, e, dtype, f"inference {what}")
    # training: random masks from (seed, stream), and backward
    y, hn, cn, tape = F.lstm_train(**arrays, batch_first=batch_first, seed=11, stream=3, **kw)
    yr, hr, cr, cache = _reference(arrays, kw, batch_first, training=True, seed=11, stream=3)
    for a, e, what in ((y, yr, "y"), (hn, hr, "h_n"), (cn, cr, "c_n")):
        assert_close(a, e, dtype, f"training {what}")
    rng = np.random.default_rng(5)
    dy, dh, dc = (rng.standard_normal(a.shape).astype(dtype) for a in (y, hn, cn))
    g = F.lstm_backward(tape, dy, dh, dc)
    gr = R.lstm_backward(cache, dy.astype(np.float64), dh.astype(np.float64),
                         dc.astype(np.float64))
    for field in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr", "dpeephole",
                  "dlayer_norm"):
        got, want = getattr(g, field), gr[field]
        assert (got is None) == (want is None), field
        if field == "dlayer_norm" and got is not None:
            for k, (a, e) in enumerate(zip(got, want)):
                assert_close(a, e, dtype, f"{field}[{k}]")
        elif got is not None:
            assert_close(got, want, dtype, field)


@pytest.mark.parametrize("peephole", [True, False])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_variants_bitwise_identical_for_any_thread_count(threads: int, peephole: bool) -> None:
    """Every variant at once, H spanning several panels: the same bits for any thread count
    (without peepholes, backward splits its steps by rows when R's panels are fewer than the
    threads: P = 40 is one panel with AVX-512)."""
    rng = np.random.default_rng(1)
    Tn, Bn, In, Hn, Pn = 6, 13, 20, 70, 40
    x = rng.standard_normal((Tn, Bn, In)).astype(np.float32)
    w = [rng.standard_normal(s).astype(np.float32) * 0.2
         for s in ((4 * Hn, In), (4 * Hn, Pn), (4 * Hn,), (Pn, Hn), (3, Hn))]
    kw = dict(lengths=rng.integers(0, Tn + 1, Bn), reverse=True, w_hr=w[3],
              peephole=w[4] if peephole else None, clip=2.0, zoneout_h=0.2, zoneout_c=0.1,
              recurrent_dropout=0.2, seed=9)

    def run() -> list[np.ndarray]:
        y, hn, cn, tape = F.lstm_train(x, w[0], w[1], w[2], **kw)
        g = F.lstm_backward(tape, np.ones_like(y), np.ones_like(hn), np.ones_like(cn))
        return [y, hn, cn] + [a for a in g if a is not None]

    old = lstmx.get_num_threads()
    try:
        lstmx.set_num_threads(1)
        base = run()
        lstmx.set_num_threads(threads)
        for a, b in zip(base, run()):
            np.testing.assert_array_equal(a, b)
    finally:
        lstmx.set_num_threads(old)


def test_padding_costs_nothing_and_states_are_per_sequence() -> None:
    """y is 0 past each end, h_n/c_n are each sequence's own last state, and a sequence's
    results do not depend on the others' lengths."""
    arrays, _ = _case({}, np.float64, False)
    lengths = np.array(LENGTHS)
    y, hn, cn = F.lstm(**arrays, lengths=lengths)
    for b, n in enumerate(LENGTHS):
        assert not y[n:, b].any()
        alone = F.lstm(arrays["x"][:n, b:b + 1], *(arrays[k] for k in ("w_ih", "w_hh", "b_ih",
                                                                        "b_hh")),
                       arrays["h0"][b:b + 1], arrays["c0"][b:b + 1])
        np.testing.assert_allclose(y[:n, b], alone[0][:, 0], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(hn[b], alone[1][0], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(cn[b], alone[2][0], rtol=1e-13, atol=1e-13)


def test_padded_steps_take_no_workspace() -> None:
    """The training workspace holds the useful tokens only: its size is affine in
    sum(lengths), whatever the lengths (the steps run over the active batch, sorted by length,
    and a padded token has no row in any buffer)."""
    arrays, _ = _case({}, np.float32, False)
    args = {k: arrays[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh")}

    def nbytes(lengths: list[int]) -> int:
        return F.lstm_train(**args, lengths=np.array(lengths))[3].nbytes

    empty = nbytes([0] * B)
    per_token = (nbytes([T] * B) - empty) / (T * B)
    assert per_token >= 4 * (I + 4 * H + 2 * H)  # x, the gates, h_{t-1} and c of each token
    for lengths in (LENGTHS, [1, 2, 3, 4, 5], [T, 0, 0, 0, 0], [2] * B):
        assert nbytes(lengths) == empty + per_token * sum(lengths), lengths


def test_mask_hash_is_the_reference_one() -> None:
    S, Bn, n = 3, 4, 5
    for seed, stream in ((0, 0), (42, 2), (2**64 - 1, 11)):
        np.testing.assert_array_equal(_core.uniform(seed, stream, S * Bn * n),
                                      R.uniform(seed, stream, S, Bn, n).ravel())


@pytest.mark.parametrize("kw, err, match", [
    (dict(lengths=[1, 2]), ValueError, "lengths: expected shape"),
    (dict(lengths=[1, 2, 3, 8, 0]), ValueError, r"lengths: expected values in \[0, T\]"),
    (dict(lengths=[1, 2, 3, -1, 0]), ValueError, "lengths"),
    (dict(lengths=[1.0, 2, 3, 4, 0]), TypeError, "lengths: expected integers"),
    (dict(peephole=np.zeros((2, H))), ValueError, "peephole: expected shape"),
    (dict(clip=0.0), ValueError, "clip"),
    (dict(clip="1"), TypeError, "clip"),
    (dict(zoneout_h=1.5), ValueError, "zoneout_h"),
    (dict(zoneout_c=-0.1), ValueError, "zoneout_c"),
    (dict(reverse="yes"), TypeError, "reverse"),
    (dict(w_hr=np.zeros((H, H))), ValueError, "w_hr"),
    (dict(w_hr=np.zeros((P, H))), ValueError, "w_hh: expected shape"),
    (dict(seed=-1), ValueError, "seed"),
])
def test_bad_variant_arguments(kw: dict[str, Any], err: type, match: str) -> None:
    arrays, _ = _case({}, np.float64, False)
    with pytest.raises(err, match=match):
        F.lstm_train(**arrays, **kw)


def test_recurrent_dropout_probability_one_is_refused() -> None:
    arrays, _ = _case({}, np.float64, False)
    with pytest.raises(ValueError, match=r"recurrent_dropout: expected a probability in \[0, 1\)"):
        F.lstm_train(**arrays, recurrent_dropout=1.0)
