"""lstmx.LSTM: parameters, state_dict, PyTorch's call convention and shapes, stacks, directions,
lengths, dropout and every variant (see docs/variants.md). Agreement with torch.nn.LSTM is in
test_torch.py."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from conftest import DTYPES, assert_close, numerical_grads

import lstmx
from lstmx import _core
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


def test_stack_parameters() -> None:
    m = lstmx.LSTM(3, 4, 2, bidirectional=True, peephole=True, seed=0)
    shapes = {k: a.shape for k, a in m.named_parameters().items()}
    passes = ["l0", "l0_reverse", "l1", "l1_reverse"]
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "peephole")
    assert list(shapes) == [f"{n}_{p}" for p in passes for n in names]
    assert shapes["weight_ih_l0_reverse"] == (16, 3) and shapes["weight_ih_l1"] == (16, 8)
    assert shapes["weight_hh_l1_reverse"] == (16, 4) and shapes["peephole_l1"] == (3, 4)
    k = 1 / np.sqrt(4)
    every = np.abs(np.concatenate([a.ravel() for a in m.named_parameters().values()]))
    assert every.max() <= k and every.max() > 0.95 * k and abs(every.mean() - k / 2) < 0.05 * k
    # the extras are drawn after PyTorch's parameters: those do not change
    base = lstmx.LSTM(3, 4, 2, bidirectional=True, seed=0).named_parameters()
    for n, a in base.items():
        np.testing.assert_array_equal(a, getattr(m, n), err_msg=n)
    assert repr(m) == "LSTM(3, 4, num_layers=2, bidirectional=True, peephole=True)"


def test_forget_bias() -> None:
    m = lstmx.LSTM(3, 4, 2, bidirectional=True, forget_bias=1.5, seed=2)
    plain = lstmx.LSTM(3, 4, 2, bidirectional=True, seed=2)
    for n, a in m.named_parameters().items():
        b = getattr(plain, n).copy()
        if n.startswith("bias_"):
            b[4:8] = 1.5 if n.startswith("bias_ih") else 0.0
        np.testing.assert_array_equal(a, b, err_msg=n)
    with pytest.raises(ValueError, match="forget_bias: needs bias=True"):
        lstmx.LSTM(3, 4, bias=False, forget_bias=1.0)


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
@pytest.mark.parametrize("stack", [{}, dict(num_layers=2, bidirectional=True)])
def test_unbatched_input(batch_first: bool, stack: dict[str, Any]) -> None:
    m = lstmx.LSTM(4, 3, batch_first=batch_first, dtype=np.float64, seed=1, **stack)
    LD, F = (4, 6) if stack else (1, 3)
    x = np.random.default_rng(0).standard_normal((6, 4))
    y, (hn, cn) = m(x)
    assert y.shape == (6, F) and hn.shape == (LD, 3) and cn.shape == (LD, 3)
    yb, (hb, cb) = m(x[None] if batch_first else x[:, None])
    np.testing.assert_array_equal(y, yb[0] if batch_first else yb[:, 0])
    np.testing.assert_array_equal(hn, hb[:, 0])
    y, (hn, cn), tape = m.forward_train(x, (hn, cn))
    dx, (dh0, dc0), grads = m.backward(tape, np.ones_like(y), np.ones_like(hn))
    assert dx.shape == x.shape and dh0.shape == (LD, 3) and dc0.shape == (LD, 3)
    assert list(grads) == list(m.named_parameters())
    with pytest.raises(ValueError, match="lengths: needs batched"):
        m(x, lengths=[6])


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
    s2 = lstmx.LSTM(3, 4, 2, bidirectional=True, peephole=True, seed=1)
    with pytest.raises(ValueError, match=r"unexpected keys \['peephole_l0'"):
        lstmx.LSTM(3, 4, 2, bidirectional=True).load_state_dict(s2.state_dict())
    with pytest.raises(ValueError, match=r"missing keys \['weight_ih_l1_reverse'"):
        s2.load_state_dict({k: v for k, v in s2.state_dict().items()
                            if k != "weight_ih_l1_reverse"})


def test_layer_pickles() -> None:
    m = lstmx.LSTM(3, 4, 2, bidirectional=True, zoneout_h=0.3, seed=5)
    m2 = pickle.loads(pickle.dumps(m))
    x = np.ones((2, 1, 3), np.float32)
    np.testing.assert_array_equal(m(x)[0], m2(x)[0])
    # the mask generator is pickled too: the next training calls draw the same seeds
    np.testing.assert_array_equal(m.forward_train(x)[0], m2.forward_train(x)[0])


@pytest.mark.parametrize("kw,err,pattern", [
    (dict(hidden_size=0), ValueError, "hidden_size: expected an int >= 1, got 0"),
    (dict(input_size=-1), ValueError, "input_size"),
    (dict(input_size=3.0), TypeError, "input_size: expected an int, got float"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(dtype=np.int32), TypeError, "dtype"),
    (dict(dropout=1.5), ValueError, r"dropout: expected a probability in \[0, 1\]"),
    (dict(recurrent_dropout=1.0), ValueError, r"recurrent_dropout: .*\[0, 1\)"),
    (dict(zoneout_h="0.1"), TypeError, "zoneout_h"),
    (dict(zoneout_c=-0.1), ValueError, "zoneout_c"),
    (dict(clip=0), ValueError, "clip: expected a positive threshold"),
    (dict(clip="1"), TypeError, "clip: expected a float"),
    (dict(forget_bias=float("nan")), ValueError, "forget_bias: expected a finite number"),
    (dict(peephole="yes"), TypeError, "peephole: expected a bool"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed="abc"), TypeError, "seed"),
    (dict(proj_size=4), ValueError, "proj_size: expected less than hidden_size = 4"),
    (dict(reverse=True, bidirectional=True), ValueError, "reverse: not with bidirectional"),
    (dict(input_forget=True, forget_bias=1.0), ValueError, "forget_bias: has no effect with "
     "input_forget=True"),
])
def test_layer_bad_constructor_arguments(kw: dict[str, Any], err: type[Exception],
                                         pattern: str) -> None:
    with pytest.raises(err, match=pattern):
        lstmx.LSTM(**{"input_size": 3, "hidden_size": 4, **kw})


def test_dropout_with_one_layer_warns() -> None:
    with pytest.warns(UserWarning, match=r"dropout: applies between layers only.*dropout=0.5"):
        m = lstmx.LSTM(3, 4, dropout=0.5)
    assert m.dropout == 0.5


def test_layer_bad_call_arguments() -> None:
    m = lstmx.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"x: expected 3 input features.*\(5, 2, 2\)"):
        m(np.zeros((5, 2, 2), np.float32))
    with pytest.raises(TypeError, match="x: dtype float64 does not match"):
        m(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match=r"h0: expected shape \[num_layers \* num_directions, "
                                         r"B, H\] = \(1, 2, 4\), got \(2, 4\)"):
        m(np.zeros((5, 2, 3), np.float32), (np.zeros((2, 4), np.float32),) * 2)
    with pytest.raises(TypeError, match="hx"):
        m(np.zeros((5, 2, 3), np.float32), np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="x: expected a 3-D array"):
        m(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, T\] = \[0, 5\]"):
        m(np.zeros((5, 2, 3), np.float32), lengths=[6, 1])
    with pytest.raises(ValueError, match=r"lengths: expected shape \[B\] = \(2,\)"):
        m(np.zeros((5, 2, 3), np.float32), lengths=[5])
    with pytest.raises(TypeError, match="lengths: expected integers"):
        m(np.zeros((5, 2, 3), np.float32), lengths=[5.0, 1.0])
    with pytest.raises(ValueError, match="seed"):
        m.forward_train(np.zeros((5, 2, 3), np.float32), seed=-1)
    y, _, tape = m.forward_train(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy: expected the shape of y, \(5, 2, 4\)"):
        m.backward(tape, np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"dh_n: expected the shape of h_n, .* = \(1, 2, 4\)"):
        m.backward(tape, None, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"dc_n: expected the shape of c_n, .* = \(1, 2, 4\)"):
        m.backward(tape, None, None, np.zeros((1, 2, 5), np.float32))
    _, _, _, other = lstmx.lstm_train(np.zeros((2, 5, 3), np.float32), m.weight_ih_l0,
                                      m.weight_hh_l0, batch_first=True)
    with pytest.raises(ValueError, match="tape: it was not made by this layer"):
        m.backward(other, None)
    twin = pickle.loads(pickle.dumps(m))  # the same configuration, but another layer
    with pytest.raises(ValueError, match="tape: it was not made by this layer"):
        twin.backward(tape, y)
    with pytest.raises(TypeError, match="tape: expected the tape"):
        m.backward({}, y)  # type: ignore[arg-type]


# ---- the stack, written out with lstmx.functional: the layer's contract (variants.md) ----


def functional_stack(m: lstmx.LSTM, x: np.ndarray, h0: np.ndarray | None = None,
                     c0: np.ndarray | None = None, lengths: Any = None,
                     seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``m``'s forward (training with ``seed``, else inference), one functional call per layer
    and direction, time-major; pass (k, d) uses stream 8 (2k + d), the dropout after layer k
    stream 16k + 3 over the time-major index."""
    D = 2 if m.bidirectional else 1
    inp = x.swapaxes(0, 1) if m.batch_first else x
    T, B = inp.shape[:2]
    hs, cs = [], []
    for k in range(m.num_layers):
        outs = []
        for d in range(D):
            sfx = f"l{k}" + ("_reverse" if d else "")
            p = [getattr(m, f"{n}_{sfx}", None) for n in ("weight_ih", "weight_hh", "bias_ih",
                                                          "bias_hh")]
            j = k * D + d
            kw = dict(lengths=lengths, reverse=m.reverse or d == 1, clip=m.clip,
                      peephole=getattr(m, f"peephole_{sfx}", None), zoneout_h=m.zoneout_h,
                      input_forget=m.input_forget, zoneout_c=m.zoneout_c)
            state = (None if h0 is None else h0[j], None if c0 is None else c0[j])
            if seed is None:
                y, h, c = lstmx.lstm(inp, *p, *state, **kw)
            else:
                y, h, c, _ = lstmx.lstm_train(inp, *p, *state, **kw, seed=seed,
                                              recurrent_dropout=m.recurrent_dropout,
                                              stream=8 * (2 * k + d))
            outs.append(y)
            hs.append(h)
            cs.append(c)
        inp = np.concatenate(outs, axis=-1)
        if seed is not None and m.dropout and k < m.num_layers - 1:
            u = _core.uniform(seed, 16 * k + 3, inp.size).reshape(inp.shape)
            scale = 1 / (1 - m.dropout) if m.dropout < 1 else 0.0
            inp = inp * np.where(u >= m.dropout, scale, 0.0).astype(inp.dtype)
    return inp.swapaxes(0, 1) if m.batch_first else inp, np.stack(hs), np.stack(cs)


STACK_VARIANTS = [
    dict(num_layers=3, bidirectional=True, dropout=0.5),
    dict(num_layers=2, batch_first=True, dropout=0.3, zoneout_h=0.2, zoneout_c=0.4,
         recurrent_dropout=0.25),
    dict(num_layers=2, reverse=True, peephole=True, clip=0.6, input_forget=True),
    dict(bidirectional=True, peephole=True, zoneout_c=0.5, recurrent_dropout=0.5, bias=False),
    dict(num_layers=2, bidirectional=True, dropout=1.0, forget_bias=2.0, batch_first=True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", STACK_VARIANTS, ids=lambda v: ",".join(v))
@pytest.mark.parametrize("with_lengths", [False, True])
def test_variants_reach_the_kernels(variant: dict[str, Any], with_lengths: bool,
                                    dtype: Any) -> None:
    """Every variant, lengths and the masks' streams: the layer computes exactly the stack of
    functional calls on its parameters, in training (a fixed seed) and at inference."""
    m = lstmx.LSTM(3, 4, dtype=dtype, seed=11, **variant)
    rng = np.random.default_rng(12)
    T, B, LD = 6, 4, m.num_layers * (2 if m.bidirectional else 1)
    x = rng.standard_normal((B, T, 3) if m.batch_first else (T, B, 3)).astype(dtype)
    h0, c0 = rng.standard_normal((2, LD, B, 4)).astype(dtype)
    lengths = np.array([4, 6, 0, 1]) if with_lengths else None
    for seed in (None, 7, 2**64 - 1):
        expected = functional_stack(m, x, h0, c0, lengths, seed)
        y, (hn, cn), *_ = m(x, (h0, c0), lengths) if seed is None else \
            m.forward_train(x, (h0, c0), lengths, seed=seed)
        for name, a, b in zip(("y", "h_n", "c_n"), (y, hn, cn), expected):
            np.testing.assert_array_equal(a, b, err_msg=name)
    random = bool(m.zoneout_h or m.zoneout_c or m.recurrent_dropout
                  or m.num_layers > 1 and 0 < m.dropout < 1)
    y7 = m.forward_train(x, (h0, c0), lengths, seed=7)[0]
    assert random == (not np.array_equal(y7, m.forward_train(x, (h0, c0), lengths, seed=8)[0]))


FROZEN_VARIANTS = STACK_VARIANTS + [
    dict(num_layers=2, proj_size=2, layer_norm=True, peephole=True, zoneout_h=0.2),
    dict(proj_size=3, reverse=True, clip=0.5, zoneout_c=0.3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", FROZEN_VARIANTS, ids=lambda v: ",".join(v))
def test_frozen_layer_computes_the_layers_inference_bitwise(variant: dict[str, Any],
                                                           dtype: Any) -> None:
    m = lstmx.LSTM(3, 4, dtype=dtype, seed=11, **variant)
    f = m.freeze()
    rng = np.random.default_rng(13)
    T, B, LD, R = 6, 4, m.num_layers * (2 if m.bidirectional else 1), m.proj_size or 4
    x = rng.standard_normal((B, T, 3) if m.batch_first else (T, B, 3)).astype(dtype)
    hx = (rng.standard_normal((LD, B, R)).astype(dtype),
          rng.standard_normal((LD, B, 4)).astype(dtype))
    for args in ((x,), (x, hx), (x, hx, np.array([4, 6, 0, 1])), (x[:, 0] if m.batch_first
                                                                  else x[:, 0].copy(),)):
        (y, (hn, cn)), (ye, (hne, cne)) = f(*args), m(*args)
        for name, a, b in zip(("y", "h_n", "c_n"), (y, hn, cn), (ye, hne, cne)):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert f.nbytes > 0 and repr(f) == f"FrozenLSTM({m!r})"


@pytest.mark.parametrize("threads", [1, 2])
def test_frozen_layer_on_every_isa(isa: str, threads: int) -> None:
    """Several panels (H = 130), both threads at work: packed once equals packed per call."""
    m = lstmx.LSTM(70, 130, 2, proj_size=33, seed=3)
    x = np.random.default_rng(4).standard_normal((5, 3, 70)).astype(np.float32)
    old = lstmx.get_num_threads()
    lstmx.set_num_threads(threads)
    try:
        f = m.freeze()
        np.testing.assert_array_equal(f(x)[0], m(x)[0])
    finally:
        lstmx.set_num_threads(old)


def test_frozen_layer_is_a_snapshot_and_pickles() -> None:
    m = lstmx.LSTM(3, 4, 2, bidirectional=True, peephole=True, seed=5)
    x = np.random.default_rng(6).standard_normal((5, 2, 3)).astype(np.float32)
    y0 = m(x)[0]
    f = m.freeze()
    m.weight_hh_l1 *= 2  # in place, after freezing: the snapshot does not see it
    m.bias_ih_l0 = m.bias_ih_l0 + 1
    assert not np.allclose(m(x)[0], y0)
    np.testing.assert_array_equal(f(x)[0], y0)
    g = pickle.loads(pickle.dumps(f))
    assert isinstance(g, lstmx.FrozenLSTM)
    np.testing.assert_array_equal(g(x)[0], y0)


def test_frozen_layer_refuses_bad_input() -> None:
    f = lstmx.LSTM(3, 4, 2).freeze()
    with pytest.raises(ValueError, match=r"x: expected 3 input features.*\(5, 2, 2\)"):
        f(np.zeros((5, 2, 2), np.float32))
    with pytest.raises(TypeError, match="x: dtype float64 does not match"):
        f(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match=r"h0: expected shape .* = \(2, 2, 4\)"):
        f(np.zeros((5, 2, 3), np.float32), (np.zeros((1, 2, 4), np.float32),) * 2)
    with pytest.raises(ValueError, match="lengths"):
        f(np.zeros((5, 2, 3), np.float32), None, [6, 1])
    with pytest.raises(TypeError, match="layer: expected an lstmx.LSTM, got dict"):
        lstmx.FrozenLSTM({})  # type: ignore[arg-type]


def test_packed_weights_are_checked() -> None:
    x = np.ones((2, 3, 5), np.float32)
    w_ih, w_hh = np.ones((24, 5), np.float32), np.ones((24, 6), np.float32)
    pk = _core.pack(w_ih, w_hh)
    assert (pk.I, pk.H, pk.P, pk.isa) == (5, 6, 0, lstmx.config()["isa"])
    with pytest.raises(ValueError, match=r"packed: made for I, H, P = 5, 6, 0, got 4, 6, 0"):
        _core.forward(x[..., :4].copy(), w_ih[:, :4].copy(), w_hh, None, None, None, False,
                      False, packed=pk)
    with pytest.raises(TypeError, match="packed: expected weights packed in float64"):
        _core.forward(x.astype(np.float64), w_ih.astype(np.float64), w_hh.astype(np.float64),
                      None, None, None, False, False, packed=pk)
    with pytest.raises(ValueError, match=r"w_ih, w_hh: expected 2-D arrays"):
        _core.pack(w_ih[:8], w_hh)
    with pytest.raises(ValueError, match=r"w_hh: expected shape \[4H, H\] without w_hr"):
        _core.pack(w_ih, w_hh[:, :5].copy())
    with pytest.raises(ValueError, match=r"w_hr: expected shape \(2, 6\)"):
        _core.pack(w_ih, w_hh[:, :2].copy(), np.ones((3, 6), np.float32))
    with pytest.raises(TypeError, match="w_hh: expected a numpy array of float32 or float64"):
        _core.pack(w_ih, w_hh.astype(np.int32))
    with pytest.raises(TypeError, match="w_ih: expected a numpy array of float32"):
        _core.pack(w_ih.astype(np.float64), w_hh)


@pytest.mark.skipif(len(lstmx.config()["isas_available"]) < 2,  # type: ignore[arg-type]
                    reason="one ISA level on this CPU")
def test_frozen_layer_refuses_other_kernels() -> None:
    f = lstmx.LSTM(3, 4).freeze()
    old = str(lstmx.config()["isa"])
    other = [i for i in lstmx.config()["isas_available"] if i != old][0]  # type: ignore[union-attr]
    _core.set_isa(other)
    try:
        with pytest.raises(ValueError, match=f"packed: made by the {old} kernels, but {other} is "
                                             f"active now: pack \\(freeze\\) again"):
            f(np.ones((2, 1, 3), np.float32))
        lstmx.FrozenLSTM(f.layer)(np.ones((2, 1, 3), np.float32))  # frozen again: fine
    finally:
        _core.set_isa(old)


def test_zero_lengths() -> None:
    """A sequence of length 0 (torch refuses it): y is 0, the final state is the initial one,
    and its gradient goes straight through."""
    m = lstmx.LSTM(3, 4, 2, bidirectional=True, dtype=np.float64, seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 3))
    h0, c0 = rng.standard_normal((2, 4, 3, 4))
    lengths = [3, 0, 5]
    y, (hn, cn), tape = m.forward_train(x, (h0, c0), lengths)
    assert not y[:, 1].any() and not y[3:, 0].any() and y[:3, 0].all() and y[:, 2].all()
    np.testing.assert_array_equal(hn[:, 1], h0[:, 1])
    np.testing.assert_array_equal(cn[:, 1], c0[:, 1])
    dh, dc = rng.standard_normal((2, 4, 3, 4))
    dx, (dh0, dc0), _ = m.backward(tape, rng.standard_normal(y.shape), dh, dc)
    np.testing.assert_array_equal(dh0[:, 1], dh[:, 1])
    np.testing.assert_array_equal(dc0[:, 1], dc[:, 1])
    assert not dx[:, 1].any() and not dx[3:, 0].any()
    y2, (hn2, _) = m(x[:3, :1], (h0[:, :1], c0[:, :1]))  # the sequence of length 3, alone
    np.testing.assert_allclose(y2[:, 0], y[:3, 0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hn2[:, 0], hn[:, 0], rtol=1e-12, atol=1e-14)


def test_dropout_between_layers() -> None:
    p, T, B, F = 0.3, 40, 8, 2 * 16
    m = lstmx.LSTM(5, 16, 3, bidirectional=True, dropout=p, seed=4)
    x = np.random.default_rng(0).standard_normal((T, B, 5)).astype(np.float32)
    y, _, tape = m.forward_train(x, seed=9)
    assert [mask.shape for mask in tape._masks] == [(T, B, F)] * 2  # not after the last layer
    for k, mask in enumerate(tape._masks):
        u = _core.uniform(9, 16 * k + 3, T * B * F).reshape(T, B, F)  # variants.md's stream
        np.testing.assert_array_equal(mask, np.where(u >= p, np.float32(1 / (1 - p)), 0))
        n, dropped = mask.size, np.count_nonzero(mask == 0)
        assert abs(dropped - p * n) < 4 * np.sqrt(n * p * (1 - p))
    np.testing.assert_array_equal(y, m.forward_train(x, seed=9)[0])  # the seed reproduces it
    assert not np.array_equal(y, m.forward_train(x, seed=10)[0])
    # seed None: fresh masks each call, the same sequence for a layer built with the same seed
    twin = lstmx.LSTM(5, 16, 3, bidirectional=True, dropout=p, seed=4)
    ys = [m.forward_train(x)[0] for _ in range(2)]
    assert not np.array_equal(ys[0], ys[1])
    for a in ys:
        np.testing.assert_array_equal(a, twin.forward_train(x)[0])
    # inference ignores dropout; p = 0 is no dropout at all
    plain = lstmx.LSTM(5, 16, 3, bidirectional=True, seed=4)
    np.testing.assert_array_equal(m(x)[0], plain(x)[0])
    zero = lstmx.LSTM(5, 16, 3, bidirectional=True, dropout=0.0, seed=4)
    y0, _, tape0 = zero.forward_train(x, seed=9)
    assert tape0._masks == [None, None]
    np.testing.assert_array_equal(y0, plain(x)[0])


def test_dropout_one_zeroes_the_next_layers_input() -> None:
    m = lstmx.LSTM(3, 4, 2, dropout=1.0, dtype=np.float64, seed=1)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y, (hn, _), tape = m.forward_train(x)
    top = lstmx.lstm(np.zeros((5, 2, 4)), m.weight_ih_l1, m.weight_hh_l1, m.bias_ih_l1,
                     m.bias_hh_l1)
    np.testing.assert_array_equal(y, top[0])
    dx, _, grads = m.backward(tape, np.ones_like(y))
    assert not dx.any() and not grads["weight_ih_l0"].any() and not grads["weight_ih_l1"].any()


def test_training_masks_come_from_the_seed() -> None:
    """Zoneout and recurrent dropout: seed None draws fresh masks from the layer's generator."""
    m = lstmx.LSTM(3, 4, zoneout_h=0.5, recurrent_dropout=0.5, seed=3)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    a, b = m.forward_train(x)[0], m.forward_train(x)[0]
    assert not np.array_equal(a, b)
    twin = lstmx.LSTM(3, 4, zoneout_h=0.5, recurrent_dropout=0.5, seed=3)
    np.testing.assert_array_equal(a, twin.forward_train(x)[0])
    np.testing.assert_array_equal(b, twin.forward_train(x)[0])


# Every variant of the layer; a new one is a new line. "unbatched": 2-D x; "lengths": B = 3
# sequences of lengths 2, 0, 3; a layer with random masks is checked through forward_train with
# a fixed seed.
VARIANTS: list[dict[str, Any]] = [
    dict(),
    dict(bias=False),
    dict(batch_first=True),
    dict(unbatched=True),
    dict(batch_first=True, unbatched=True, bias=False),
    dict(num_layers=2, bidirectional=True, lengths=True),
    dict(num_layers=3, bidirectional=True, batch_first=True, unbatched=True),
    dict(peephole=True, clip=0.5, input_forget=True),
    dict(peephole=True, bidirectional=True, lengths=True, forget_bias=1.0),
    dict(zoneout_h=0.3, zoneout_c=0.4, recurrent_dropout=0.25),
    dict(num_layers=2, bidirectional=True, dropout=0.5, zoneout_c=0.5, lengths=True),
    dict(reverse=True),
    dict(num_layers=2, reverse=True, lengths=True, batch_first=True),
    dict(proj_size=2),
    dict(layer_norm=True),
    dict(layer_norm=True, peephole=True, zoneout_h=0.3, zoneout_c=0.2, lengths=True),
    dict(layer_norm=True, proj_size=2, num_layers=2, bidirectional=True, recurrent_dropout=0.2),
    dict(proj_size=3, num_layers=2, bidirectional=True, lengths=True, zoneout_h=0.3,
         recurrent_dropout=0.2, peephole=True),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(v) or "default")
def test_gradient_check_every_variant(variant: dict[str, Any]) -> None:
    """backward against central differences of the layer's own forward, in float64: the
    gradients of x, the initial state and every parameter."""
    kw = {k: v for k, v in variant.items() if k not in ("unbatched", "lengths")}
    m = lstmx.LSTM(3, 4, dtype=np.float64, seed=7, **kw)
    rng = np.random.default_rng(8)
    T, B, LD = 3, 3, m.num_layers * (2 if m.bidirectional else 1)
    lengths = [2, 0, 3] if variant.get("lengths") else None
    shape = (T, 3) if variant.get("unbatched") else (B, T, 3) if m.batch_first else (T, B, 3)
    R_ = m.proj_size or 4  # units of h

    def sshape(n: int) -> tuple[int, ...]:
        return (LD, n) if variant.get("unbatched") else (LD, B, n)

    x, h0, c0 = rng.standard_normal(shape), rng.standard_normal(sshape(R_)), \
        rng.standard_normal(sshape(4))
    y, (hn, cn), tape = m.forward_train(x, (h0, c0), lengths, seed=5)
    wy, wh, wc = (rng.standard_normal(a.shape) for a in (y, hn, cn))
    random = m.zoneout_h or m.zoneout_c or m.recurrent_dropout or m.dropout

    def loss() -> float:
        y, (hn, cn), *_ = m.forward_train(x, (h0, c0), lengths, seed=5) if random else \
            m(x, (h0, c0), lengths)
        return float((y * wy).sum() + (hn * wh).sum() + (cn * wc).sum())

    dx, (dh0, dc0), grads = m.backward(tape, wy, wh, wc)
    assert list(grads) == list(m.named_parameters())
    num = numerical_grads(loss, dict(x=x, h0=h0, c0=c0, **m.named_parameters()))
    for k, g in dict(x=dx, h0=dh0, c0=dc0, **grads).items():
        np.testing.assert_allclose(g, num[k], rtol=1e-6, atol=1e-8, err_msg=k)


# The layer against the NumPy reference's stack (reference.lstm_stack_forward/backward), which
# is itself tested against torch, ONNX Runtime and finite differences.
STACKS: list[dict[str, Any]] = [
    dict(num_layers=2, bidirectional=True, proj_size=3, dropout=0.3),
    dict(num_layers=2, peephole=True, clip=0.7, input_forget=True, zoneout_h=0.2,
         zoneout_c=0.3, recurrent_dropout=0.25, batch_first=True),
    dict(num_layers=3, bidirectional=True, bias=False, zoneout_c=0.5, dropout=0.5,
         proj_size=2, peephole=True),
    dict(reverse=True, num_layers=2, proj_size=4, recurrent_dropout=0.4),
    dict(layer_norm=True, peephole=True, zoneout_h=0.2, zoneout_c=0.3, num_layers=2,
         bidirectional=True, dropout=0.2),
    dict(layer_norm=True, proj_size=3, input_forget=True, clip=1.5, recurrent_dropout=0.3,
         batch_first=True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("variant", STACKS, ids=lambda v: ",".join(v))
def test_layer_matches_reference_stack(variant: dict[str, Any], with_lengths: bool,
                                       dtype: Any) -> None:
    m = lstmx.LSTM(5, 6, dtype=dtype, seed=2, **variant)
    rng = np.random.default_rng(3)
    T, B, LD, R_ = 6, 4, m.num_layers * (2 if m.bidirectional else 1), m.proj_size or 6
    x = rng.standard_normal((B, T, 5) if m.batch_first else (T, B, 5)).astype(dtype)
    h0, c0 = (rng.standard_normal((LD, B, n)).astype(dtype) for n in (R_, 6))
    lengths = [6, 0, 2, 5] if with_lengths else None
    params = {k: v.astype(np.float64) for k, v in m.named_parameters().items()}
    opts = {k: getattr(m, k) for k in ("num_layers", "bidirectional", "batch_first", "dropout",
                                       "reverse", "clip", "input_forget", "zoneout_h",
                                       "zoneout_c", "recurrent_dropout")}
    state = (h0.astype(np.float64), c0.astype(np.float64))
    for training in (False, True):
        if training:
            y, (hn, cn), tape = m.forward_train(x, (h0, c0), lengths, seed=17)
        else:
            y, (hn, cn) = m(x, (h0, c0), lengths)
        yr, (hr, cr), cache = R.lstm_stack_forward(x.astype(np.float64), params, hx=state,
                                                   lengths=lengths, training=training,
                                                   seed=17, **opts)
        for a, e, what in ((y, yr, "y"), (hn, hr, "h_n"), (cn, cr, "c_n")):
            assert_close(a, e, dtype, f"{what}, training={training}")
    dy, dh, dc = (rng.standard_normal(a.shape).astype(dtype) for a in (y, hn, cn))
    dx, (dh0, dc0), grads = m.backward(tape, dy, dh, dc)
    dxr, (dh0r, dc0r), gr = R.lstm_stack_backward(cache, *(a.astype(np.float64)
                                                          for a in (dy, dh, dc)))
    assert list(grads) == list(m.named_parameters()) and set(gr) == set(grads)
    for k, (a, e) in dict(dx=(dx, dxr), dh0=(dh0, dh0r), dc0=(dc0, dc0r),
                          **{k: (grads[k], gr[k]) for k in grads}).items():
        assert_close(a, e, dtype, k)
