"""The oracle itself: the NumPy reference against the seeds' formulation and finite differences."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import GRAD_NAMES, assert_close, make_case, numerical_grads, require

import lstmx
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


# ---- the random masks' hash (docs/variants.md), identical in C++ ----------------------------

M64 = 0xFFFFFFFFFFFFFFFF


def _u_by_hand(seed: int, stream: int, s: int, b: int, j: int, B: int, n: int) -> float:
    """variants.md's hash in plain Python ints."""
    idx = (s * B + b) * n + j
    z = (seed + (stream + 1) * 0x9E3779B97F4A7C15 + idx * 0xD1B54A32D192ED03) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return (z >> 40) / 2**24


@pytest.mark.parametrize("seed,stream,S,B,n", [(0, 0, 3, 2, 4), (12345, 7, 2, 3, 5),
                                               (M64, M64, 2, 2, 3), (2**63 + 1, 17, 1, 1, 1)])
def test_uniform_matches_plain_python_ints(seed: int, stream: int, S: int, B: int, n: int) -> None:
    u = R.uniform(seed, stream, S, B, n)
    assert u.shape == (S, B, n) and u.dtype == np.float64
    expected = [_u_by_hand(seed, stream, s, b, j, B, n) for s, b, j in np.ndindex(S, B, n)]
    np.testing.assert_array_equal(u.ravel(), expected)


# Known answers, for the C++ implementation to check the same numbers: u(seed, stream, s, b, j)
# with B = 3, n = 5, as u * 2^24 (the hash's top 24 bits).
KNOWN_U = {(0, 0, 0, 0, 0): 14819496, (42, 2, 1, 2, 4): 2948405, (M64, 11, 3, 1, 0): 14512445}


def test_uniform_known_answers() -> None:
    for (seed, stream, s, b, j), top in KNOWN_U.items():
        assert _u_by_hand(seed, stream, s, b, j, 3, 5) == top / 2**24
        assert R.uniform(seed, stream, s + 1, 3, 5)[s, b, j] == top / 2**24


def test_uniform_is_uniform() -> None:
    u = R.uniform(3, 1, 64, 32, 64)  # 131072 draws
    assert u.min() >= 0 and u.max() < 1 and np.all(u * 2**24 == np.floor(u * 2**24))
    for p in (0.1, 0.5, 0.9):  # within 5 standard deviations
        assert abs((u < p).mean() - p) < 5 * np.sqrt(p * (1 - p) / u.size)
    assert abs(u.mean() - 0.5) < 0.005
    assert not np.array_equal(u, R.uniform(4, 1, 64, 32, 64))
    assert not np.array_equal(u, R.uniform(3, 2, 64, 32, 64))


# ---- one pass with every variant: backward against finite differences ------------------------

LN_KEYS = ("gain_x", "gain_h", "gain_c", "bias_c")
PASS_GRADS = dict(GRAD_NAMES, w_hr="dw_hr", peephole="dpeephole")


def _pass_arrays(T: int = 3, B: int = 3, I: int = 2, H: int = 3, P: int = 0,
                 peephole: bool = False, layer_norm: bool = False, seed: int = 0,
                 scale: float = 0.5) -> dict[str, np.ndarray]:
    """The arrays of one pass by argument name (layer-norm gains by LN_KEYS)."""
    a = make_case(T, B, I, H, seed=seed, scale=scale)
    rng = np.random.default_rng(seed + 1)
    if P:
        a.update(w_hh=a["w_hh"][:, :P].copy(), h0=a["h0"][:, :P].copy(),
                 w_hr=rng.standard_normal((P, H)) * 0.7)
    if peephole:
        a["peephole"] = rng.standard_normal((3, H)) * 0.5
    if layer_norm:
        a.update({k: 1 + 0.3 * rng.standard_normal(n) for k, n in
                  zip(LN_KEYS, (4 * H, 4 * H, H, H))})
    return a


def _run_pass(a: dict[str, np.ndarray], **opts: Any) -> tuple[Any, ...]:
    kw = {k: v for k, v in a.items() if k not in LN_KEYS}
    ln = tuple(a[k] for k in LN_KEYS) if LN_KEYS[0] in a else None
    return R.lstm_forward(**kw, layer_norm=ln, **opts)


def _check_pass_gradients(a: dict[str, np.ndarray], **opts: Any) -> dict[str, Any]:
    """lstm_backward against central differences of a random weighting of y, h_n and c_n."""
    y, h, c, cache = _run_pass(a, **opts)
    rng = np.random.default_rng(11)
    wy, wh, wc = (rng.standard_normal(v.shape) for v in (y, h, c))

    def loss() -> float:
        y, h, c, _ = _run_pass(a, **opts)
        return float((y * wy).sum() + (h * wh).sum() + (c * wc).sum())

    g = R.lstm_backward(cache, wy, wh, wc)
    num = numerical_grads(loss, a)
    for k, v in num.items():
        got = g["dlayer_norm"][LN_KEYS.index(k)] if k in LN_KEYS else g[PASS_GRADS[k]]
        np.testing.assert_allclose(got, v, rtol=1e-6, atol=1e-8, err_msg=k)
    return dict(y=y, h=h, c=c, cache=cache, g=g)


def _choose_clip(a: dict[str, np.ndarray], **opts: Any) -> float:
    """A clip that clamps at least 3 gate pre-activations, with none within 1e-4 of it (the
    clamp's kinks, where finite differences do not apply)."""
    for clip in np.linspace(0.5, 2.0, 31):
        steps = _run_pass(a, **opts, clip=clip)[3]["steps"]
        z = np.abs(np.concatenate([st["z"][k].ravel() for st in steps for k in R.GATES]))
        if (z > clip).sum() >= 3 and (z < clip).any() and np.abs(z - clip).min() > 1e-4:
            return float(clip)
    pytest.fail("no clip value clamps some gates away from the kinks")


PASS_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (arrays of _pass_arrays, options of lstm_forward; clip="auto": _choose_clip's)
    "lengths": ({}, dict(lengths=[2, 0, 3])),
    "reverse": ({}, dict(reverse=True)),
    "proj": (dict(P=2), {}),
    "peephole": (dict(peephole=True), {}),
    "clip": (dict(peephole=True, scale=1.0), dict(clip="auto")),
    "input_forget": ({}, dict(input_forget=True)),
    "layer_norm": (dict(layer_norm=True), {}),
    "zoneout, training": ({}, dict(zoneout_h=0.4, zoneout_c=0.5, training=True, seed=5)),
    "zoneout, inference": ({}, dict(zoneout_h=0.4, zoneout_c=0.5)),
    "recurrent dropout": ({}, dict(recurrent_dropout=0.4, training=True, seed=5)),
    "lengths, reverse, proj, batch_first": (dict(P=2, T=4), dict(lengths=[4, 0, 2], reverse=True,
                                                                  batch_first=True)),
    "layer_norm, peephole, zoneout, recurrent dropout": (
        dict(layer_norm=True, peephole=True),
        dict(zoneout_h=0.3, zoneout_c=0.4, recurrent_dropout=0.3, training=True, seed=9)),
    "everything": (dict(P=2, peephole=True, layer_norm=True, T=4),
                   dict(lengths=[3, 4, 1], reverse=True, input_forget=True, clip="auto",
                        zoneout_h=0.3, zoneout_c=0.3, recurrent_dropout=0.2, training=True,
                        seed=2, stream_base=8)),
}


@pytest.mark.parametrize("name", PASS_CASES)
def test_pass_backward_matches_finite_differences(name: str) -> None:
    arrays_kw, opts = PASS_CASES[name]
    a = _pass_arrays(**arrays_kw)
    if opts.get("batch_first"):
        a["x"] = np.ascontiguousarray(a["x"].swapaxes(0, 1))
    if opts.get("clip") == "auto":
        opts = dict(opts, clip=_choose_clip(a, **{k: v for k, v in opts.items() if k != "clip"}))
    out = _check_pass_gradients(a, **opts)
    if "lengths" in opts:  # padded steps: y = 0, and dx = 0
        y, dx = out["y"], out["g"]["dx"]
        if opts.get("batch_first"):
            y, dx = y.swapaxes(0, 1), dx.swapaxes(0, 1)
        pad = np.arange(y.shape[0])[:, None] >= np.array(opts["lengths"])[None]  # [T, B]
        assert pad.any() and not y[pad].any() and not dx[pad].any()
    if opts.get("input_forget"):  # the forget gate's parameters get no gradient ...
        g, f = out["g"], slice(out["c"].shape[1], 2 * out["c"].shape[1])
        assert not g["db_ih"][f].any() and (g["dpeephole"] is None or not g["dpeephole"][1].any())
        if g["dlayer_norm"] is None:  # ... but with layer norm, its rows of z still enter the
            assert not g["dw_ih"][f].any() and not g["dw_hh"][f].any()  # mean and variance
        else:
            assert not g["dlayer_norm"][0][f].any() and g["dw_ih"][f].any()
    if opts.get("training") and opts.get("zoneout_h"):  # both mask values occur
        keep = np.concatenate([st["keep_h"].ravel() for st in out["cache"]["steps"]])
        assert 0 < keep.mean() < 1


# ---- zoneout and recurrent dropout ------------------------------------------------------------

def test_mask_frequencies_and_streams() -> None:
    """Each mask is the hash of its own stream, and hits with frequency p: zoneout on h (h_s ==
    h_{s-1} exactly), on c (one step: c_n == c0), recurrent dropout (one step: dh0 == 0)."""
    T, B, H, seed, base = 6, 40, 20, 7, 16
    a = _pass_arrays(T=T, B=B, I=3, H=H)
    tol = 5 * np.sqrt(0.25 / (T * B * H))
    y, *_ = R.lstm_forward(**a, zoneout_h=0.3, training=True, seed=seed, stream_base=base)
    same = y == np.concatenate([a["h0"][None], y[:-1]])  # [T, B, H]
    np.testing.assert_array_equal(same, R.uniform(seed, base + 1, T, B, H) < 0.3)
    assert abs(same.mean() - 0.3) < tol
    one = {k: a[k][:1] if k == "x" else a[k] for k in a}
    _, _, c, _ = R.lstm_forward(**one, zoneout_c=0.6, training=True, seed=seed, stream_base=base)
    np.testing.assert_array_equal(c == a["c0"], R.uniform(seed, base, 1, B, H)[0] < 0.6)
    *_, cache = R.lstm_forward(**one, recurrent_dropout=0.25, training=True, seed=seed,
                               stream_base=base)
    dh0 = R.lstm_backward(cache, None, np.ones((B, H)))["dh0"]
    np.testing.assert_array_equal(dh0 == 0, R.uniform(seed, base + 2, 1, B, H)[0] < 0.25)
    assert abs((dh0 == 0).mean() - 0.25) < 5 * tol


def test_recurrent_dropout_is_one_scaled_mask_for_all_steps() -> None:
    a = _pass_arrays(T=3, B=3, I=2, H=4)
    p, seed = 0.5, 4
    y, h, c, _ = R.lstm_forward(**a, recurrent_dropout=p, training=True, seed=seed)
    m = (R.uniform(seed, 2, 1, 3, 4)[0] >= p) / (1 - p)
    assert 0 < (m == 0).mean() < 1
    hs, cs = a["h0"], a["c0"]
    for t in range(3):  # step by step, the dropped state in h0's place
        ys, hs, cs, _ = R.lstm_forward(a["x"][t:t + 1], a["w_ih"], a["w_hh"], a["b_ih"],
                                       a["b_hh"], hs * m, cs)
        np.testing.assert_allclose(y[t], ys[0], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(h, hs, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(c, cs, rtol=1e-14, atol=1e-15)


def test_zero_probabilities_and_inference_are_the_plain_lstm() -> None:
    a = _pass_arrays()
    plain = R.lstm_forward(**a)[:3]
    for opts in (dict(zoneout_h=0.0, zoneout_c=0.0, recurrent_dropout=0.0, training=True),
                 dict(recurrent_dropout=0.7, training=False, seed=3)):
        for got, expected in zip(R.lstm_forward(**a, **opts)[:3], plain):
            np.testing.assert_array_equal(got, expected)


def test_zoneout_one_keeps_the_initial_state() -> None:
    a = _pass_arrays(T=4)
    y, h, c, _ = R.lstm_forward(**a, zoneout_h=1.0, zoneout_c=1.0, training=True, seed=1)
    np.testing.assert_array_equal(y, np.broadcast_to(a["h0"], y.shape))
    np.testing.assert_array_equal(h, a["h0"])
    np.testing.assert_array_equal(c, a["c0"])


def test_zoneout_inference_uses_the_expectation() -> None:
    a = _pass_arrays(T=1)
    _, h1, c1, _ = R.lstm_forward(**a)
    _, h, c, _ = R.lstm_forward(**a, zoneout_h=0.3, zoneout_c=0.8, seed=5)
    np.testing.assert_allclose(h, 0.3 * a["h0"] + 0.7 * h1, rtol=1e-14)
    np.testing.assert_allclose(c, 0.8 * a["c0"] + 0.2 * c1, rtol=1e-14)


def test_seeds() -> None:
    a = _pass_arrays(T=4)
    opts = dict(zoneout_h=0.3, zoneout_c=0.3, recurrent_dropout=0.3, training=True)
    y = R.lstm_forward(**a, **opts, seed=1)[0]
    np.testing.assert_array_equal(y, R.lstm_forward(**a, **opts, seed=1)[0])
    assert not np.array_equal(y, R.lstm_forward(**a, **opts, seed=2)[0])
    assert not np.array_equal(y, R.lstm_forward(**a, **opts, seed=1, stream_base=8)[0])


# ---- stacks ---------------------------------------------------------------------------------

def _stack_params(L: int, D: int, I: int, H: int, P: int = 0, bias: bool = True,
                  extras: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Random parameters by name; ``extras``: peepholes and layer norm too."""
    rng = np.random.default_rng(seed)
    R_ = P or H
    p = {}
    for k in range(L):
        for sfx in ("", "_reverse")[:D]:
            shapes: dict[str, tuple[int, ...]] = {
                f"weight_ih_l{k}{sfx}": (4 * H, I if k == 0 else D * R_),
                f"weight_hh_l{k}{sfx}": (4 * H, R_)}
            if bias:
                shapes.update({f"bias_ih_l{k}{sfx}": (4 * H,), f"bias_hh_l{k}{sfx}": (4 * H,)})
            if P:
                shapes[f"weight_hr_l{k}{sfx}"] = (P, H)
            if extras:
                shapes.update({f"peephole_l{k}{sfx}": (3, H), f"ln_gain_ih_l{k}{sfx}": (4 * H,),
                               f"ln_gain_hh_l{k}{sfx}": (4 * H,), f"ln_gain_c_l{k}{sfx}": (H,),
                               f"ln_bias_c_l{k}{sfx}": (H,)})
            p.update({n: rng.standard_normal(s) * 0.5 + n.startswith("ln_gain")
                      for n, s in shapes.items()})
    return p


STACK_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (arguments of _stack_params, options of lstm_stack_forward)
    "2 layers, bidirectional, proj, lengths, dropout": (
        dict(L=2, D=2, I=2, H=3, P=2),
        dict(num_layers=2, bidirectional=True, lengths=[3, 0, 2], dropout=0.4, training=True,
             seed=3)),
    "bidirectional, peephole, layer_norm, every option": (
        dict(L=1, D=2, I=2, H=2, extras=True),
        dict(bidirectional=True, lengths=[1, 3, 2], clip=5.0, input_forget=True,
             zoneout_h=0.3, zoneout_c=0.3, recurrent_dropout=0.3, training=True, seed=1)),
}


@pytest.mark.parametrize("name", STACK_CASES)
def test_stack_backward_matches_finite_differences(name: str) -> None:
    T, B = 3, 3
    kw, opts = STACK_CASES[name]
    rng = np.random.default_rng(3)
    LD, R_ = kw["L"] * kw["D"], kw.get("P") or kw["H"]
    a = dict(_stack_params(**kw), x=rng.standard_normal((T, B, kw["I"])),
             h0=rng.standard_normal((LD, B, R_)), c0=rng.standard_normal((LD, B, kw["H"])))

    def run() -> tuple[Any, ...]:
        params = {k: v for k, v in a.items() if k not in ("x", "h0", "c0")}
        return R.lstm_stack_forward(a["x"], params, hx=(a["h0"], a["c0"]), **opts)

    y, (h, c), cache = run()
    if opts.get("dropout"):
        assert 0 < (cache["masks"][0] == 0).mean() < 1
    wy, wh, wc = (rng.standard_normal(v.shape) for v in (y, h, c))

    def loss() -> float:
        y, (h, c), _ = run()
        return float((y * wy).sum() + (h * wh).sum() + (c * wc).sum())

    dx, (dh0, dc0), grads = R.lstm_stack_backward(cache, wy, wh, wc)
    got = dict(grads, x=dx, h0=dh0, c0=dc0)
    num = numerical_grads(loss, a)
    assert got.keys() == num.keys()
    for k, v in num.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-8, err_msg=k)


def test_stack_is_its_passes_with_dropout_between() -> None:
    """Layer l, direction d is lstm_forward with stream_base 8 (2l + d); the dropout mask
    after layer l is the hash of stream 16 l + 3, scaled; p = 1 drops everything."""
    T, B, I, H = 4, 3, 2, 3
    x = np.random.default_rng(1).standard_normal((T, B, I))
    params, lengths = _stack_params(2, 2, I, H), np.array([4, 2, 3])
    opts = dict(lengths=lengths, zoneout_h=0.2, training=True, seed=6)
    for p in (0.3, 1.0):
        y, (h, c), _ = R.lstm_stack_forward(x, params, num_layers=2, bidirectional=True,
                                            dropout=p, **opts)
        inp, hs = x, []
        for k in range(2):
            outs = []
            for d, sfx in enumerate(("", "_reverse")):
                names = [f"{n}_l{k}{sfx}" for n in ("weight_ih", "weight_hh", "bias_ih",
                                                    "bias_hh")]
                yd, hd, _, _ = R.lstm_forward(inp, *(params[n] for n in names), reverse=d == 1,
                                              stream_base=8 * (2 * k + d), **opts)
                outs.append(yd)
                hs.append(hd)
            inp = np.concatenate(outs, axis=2)
            if k == 0:
                keep = R.uniform(6, 3, T, B, 2 * H) >= p
                inp = inp * (keep / (1 - p)) if p < 1 else 0 * inp
        np.testing.assert_array_equal(y, inp)
        np.testing.assert_array_equal(h, np.stack(hs))
    y_eval = R.lstm_stack_forward(x, params, num_layers=2, bidirectional=True, dropout=0.3,
                                  lengths=lengths)[0]
    y_p0 = R.lstm_stack_forward(x, params, num_layers=2, bidirectional=True, lengths=lengths,
                                training=True)[0]
    np.testing.assert_array_equal(y_eval, y_p0)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_stack_matches_torch(batch_first: bool, bias: bool, packed: bool) -> None:
    """torch.nn.LSTM(num_layers=2, bidirectional=True, proj_size=2), float64, outputs and
    autograd gradients; a PackedSequence of unsorted lengths, padded back with zeros."""
    torch = require("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    T, B, I, H, P = 4, 3, 3, 4, 2
    torch.manual_seed(0)
    m = torch.nn.LSTM(I, H, num_layers=2, bias=bias, batch_first=batch_first,
                      bidirectional=True, proj_size=P, dtype=torch.float64)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    h0, c0 = rng.standard_normal((4, B, P)), rng.standard_normal((4, B, H))
    lengths = np.array([3, 1, 2]) if packed else None  # longest < T: padding at every step
    xt, h0t, c0t = (torch.tensor(v, requires_grad=True) for v in (x, h0, c0))
    inp = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                               enforce_sorted=False) if packed else xt
    out, (hn, cn) = m(inp, (h0t, c0t))
    if packed:
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    wy, wh, wc = (rng.standard_normal(tuple(v.shape)) for v in (out, hn, cn))
    ((out * torch.tensor(wy)).sum() + (hn * torch.tensor(wh)).sum()
     + (cn * torch.tensor(wc)).sum()).backward()

    params = {n: v.detach().numpy() for n, v in m.named_parameters()}
    y, (h, c), cache = R.lstm_stack_forward(x, params, num_layers=2, bidirectional=True,
                                            batch_first=batch_first, lengths=lengths,
                                            hx=(h0, c0))
    dx, (dh0, dc0), grads = R.lstm_stack_backward(cache, wy, wh, wc)
    for name, got, expected in [("y", y, out), ("h_n", h, hn), ("c_n", c, cn), ("dx", dx, xt.grad),
                                ("dh0", dh0, h0t.grad), ("dc0", dc0, c0t.grad)] + [
            (n, grads[n], v.grad) for n, v in m.named_parameters()]:
        assert_close(got, expected.detach().numpy(), np.float64, name)
    assert grads.keys() == params.keys()
    if lengths is not None:
        yt = y.swapaxes(0, 1) if batch_first else y
        pad = np.arange(T)[:, None] >= lengths[None]
        assert pad.any() and not yt[pad].any()


# ---- against ONNX Runtime's LSTM ----------------------------------------------------------------

ONNX_BLOCKS = [0, 3, 1, 2]  # ONNX's gates i, o, f, c are lstmx's blocks i, o, f, g
ONNX_CASES: dict[str, dict[str, Any]] = {
    "peephole": dict(peephole=True),
    "clip": dict(clip=0.7),
    "input_forget": dict(input_forget=True),
    "reverse": dict(direction="reverse"),
    "bidirectional": dict(direction="bidirectional"),
    "sequence_lens, reverse": dict(direction="reverse", lengths=[2, 4, 1]),
    "sequence_lens, bidirectional": dict(direction="bidirectional", lengths=[3, 1, 4]),
    "initial states": dict(initial=True),
    "everything": dict(direction="bidirectional", lengths=[1, 4, 3], peephole=True, clip=0.7,
                       input_forget=True, initial=True),
}


def _onnx_lstm(onnx: Any, feeds: dict[str, np.ndarray], H: int, D: int,
               attrs: dict[str, Any]) -> bytes:
    """One ONNX LSTM node, every input a graph input (those not in ``feeds`` left out)."""
    from onnx import TensorProto, helper
    order = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
    kinds = {"sequence_lens": TensorProto.INT32}
    T, B = feeds["X"].shape[:2]
    node = helper.make_node("LSTM", [n if n in feeds else "" for n in order],
                            ["Y", "Y_h", "Y_c"], hidden_size=H, **attrs)
    outs = {"Y": [T, D, B, H], "Y_h": [D, B, H], "Y_c": [D, B, H]}
    graph = helper.make_graph(
        [node], "lstm",
        [helper.make_tensor_value_info(n, kinds.get(n, TensorProto.FLOAT), list(v.shape))
         for n, v in feeds.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # opset 14's; this onnxruntime rejects newer IRs
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.mark.parametrize("impl", ["reference", "lstmx"])
@pytest.mark.parametrize("name", ONNX_CASES)
def test_pass_matches_onnxruntime(name: str, impl: str) -> None:
    """ONNX's LSTM: peepholes, clip, input_forget, directions, sequence_lens (the reverse
    direction starts at each sequence's own end), initial states. ORT in float32; the
    reference, and lstmx's kernels in float32."""
    onnx, ort = require("onnx"), require("onnxruntime")
    case = ONNX_CASES[name]
    direction = case.get("direction", "forward")
    T, B, I, H, D = 4, 3, 3, 4, 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(5)

    def r(*shape: int) -> np.ndarray:  # float32 values, float64 arrays for the reference
        return rng.standard_normal(shape).astype(np.float32).astype(np.float64)

    x, w_ih, w_hh, b_ih, b_hh = r(T, B, I), r(D, 4 * H, I), r(D, 4 * H, H), r(D, 4 * H), r(D, 4 * H)
    h0, c0, peep = r(D, B, H), r(D, B, H), r(D, 3, H)

    def gates(a: np.ndarray) -> np.ndarray:  # [D, 4H, ...]: blocks to ONNX's order
        return a.reshape(D, 4, H, *a.shape[2:])[:, ONNX_BLOCKS].reshape(a.shape)

    feeds = dict(X=x, W=gates(w_ih), R=gates(w_hh), B=np.concatenate([gates(b_ih), gates(b_hh)], 1))
    opts: dict[str, Any] = dict(clip=case.get("clip"), input_forget=case.get("input_forget", False))
    attrs = dict(direction=direction, input_forget=int(opts["input_forget"]))
    if opts["clip"] is not None:
        attrs["clip"] = opts["clip"]
    if "lengths" in case:
        feeds["sequence_lens"] = np.array(case["lengths"], np.int32)
        opts["lengths"] = case["lengths"]
    if case.get("initial"):
        feeds.update(initial_h=h0, initial_c=c0)
    if case.get("peephole"):
        feeds["P"] = peep[:, [0, 2, 1]].reshape(D, 3 * H)  # ONNX's order: i, o, f
    sess = ort.InferenceSession(_onnx_lstm(onnx, feeds, H, D, attrs),
                                providers=["CPUExecutionProvider"])
    y, yh, yc = sess.run(None, {k: v.astype(np.int32 if k == "sequence_lens" else np.float32)
                                for k, v in feeds.items()})
    for d in range(D):
        state = dict(h0=h0[d], c0=c0[d]) if case.get("initial") else {}
        args = dict(x=x, w_ih=w_ih[d], w_hh=w_hh[d], b_ih=b_ih[d], b_hh=b_hh[d], **state,
                    peephole=peep[d] if case.get("peephole") else None)
        if impl == "reference":
            ref = R.lstm_forward(**args, **opts, reverse=direction == "reverse" or d == 1)
        else:
            ref = lstmx.lstm(**{k: None if v is None else v.astype(np.float32)
                                for k, v in args.items()},
                             **opts, reverse=direction == "reverse" or d == 1)
        for what, got, expected in (("Y", y[:, d], ref[0]), ("Y_h", yh[d], ref[1]),
                                    ("Y_c", yc[d], ref[2])):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{what}, direction {d}")


# ---- bad arguments --------------------------------------------------------------------------

def _bad_pass(**change: Any) -> None:
    """lstm_forward on T = 3, B = 3, I = 2, H = 3 with a projection P = 2, changed."""
    R.lstm_forward(**{**_pass_arrays(P=2), **change})


@pytest.mark.parametrize("change,error,pattern", [
    (dict(w_hr=np.zeros(6)), ValueError, r"^w_hr: expected shape \[P, H\], got \(6,\)"),
    (dict(w_hh=np.zeros((12, 3))), ValueError,
     r"^w_hh: expected shape \[4H, P\] = \(12, 2\), got \(12, 3\)"),
    (dict(h0=np.zeros((3, 3))), ValueError, r"^h0: expected shape \[B, P\] = \(3, 2\), got"),
    (dict(c0=np.zeros((3, 2))), ValueError, r"^c0: expected shape \[B, H\] = \(3, 3\), got"),
    (dict(w_hr=np.zeros((2, 3), np.float32)), TypeError, r"^w_hr: dtype float32 does not match"),
    (dict(lengths=[1.0, 2.0, 3.0]), TypeError, r"^lengths: expected integers, got dtype float"),
    (dict(lengths=[1, 2]), ValueError, r"^lengths: expected shape \[B\] = \(3,\), got \(2,\)"),
    (dict(lengths=[1, -1, 3]), ValueError, r"^lengths: expected 0 <= length <= T = 3, got"),
    (dict(lengths=[1, 4, 3]), ValueError, r"^lengths: expected 0 <= length <= T = 3, got"),
    (dict(reverse="yes"), TypeError, r"^reverse: expected a bool"),
    (dict(peephole=np.zeros((2, 3))), ValueError, r"^peephole: expected shape \[3, H\] = \(3, 3\)"),
    (dict(clip=0.0), ValueError, r"^clip: expected a positive number, got 0.0"),
    (dict(clip=float("nan")), ValueError, r"^clip: expected a positive number"),
    (dict(clip="1"), TypeError, r"^clip: expected a number or None"),
    (dict(layer_norm=(np.ones(12),) * 3), TypeError, r"^layer_norm: expected None or a tuple"),
    (dict(layer_norm=(np.ones(12), np.ones(12), np.ones(12), np.ones(3))), ValueError,
     r"^layer_norm\[2\]: expected shape \[H\] = \(3,\), got \(12,\)"),
    (dict(zoneout_h=1.5), ValueError, r"^zoneout_h: expected a probability in \[0, 1\]"),
    (dict(zoneout_c=-0.1), ValueError, r"^zoneout_c: expected a probability in \[0, 1\]"),
    (dict(zoneout_c=True), TypeError, r"^zoneout_c: expected a number"),
    (dict(recurrent_dropout=1.0), ValueError,
     r"^recurrent_dropout: expected a probability in \[0, 1\)"),
    (dict(recurrent_dropout=float("nan")), ValueError, r"^recurrent_dropout: expected"),
    (dict(seed=-1), ValueError, r"^seed: expected an int in \[0, 18446744073709551616\), got -1"),
    (dict(seed=1.5), TypeError, r"^seed: expected an int, got float"),
    (dict(stream_base=2**64), ValueError, r"^stream_base: expected an int in"),
])
def test_pass_bad_arguments(change: dict[str, Any], error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        _bad_pass(**change)


def test_backward_bad_arguments() -> None:
    *_, cache = _run_pass(_pass_arrays(P=2))
    with pytest.raises(ValueError, match=r"^dy: expected shape \[T, B, P\] = \(3, 3, 2\)"):
        R.lstm_backward(cache, np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match=r"^dh_n: expected shape \[B, P\] = \(3, 2\)"):
        R.lstm_backward(cache, None, np.zeros((3, 3)))
    with pytest.raises(TypeError, match="^cache: expected the cache dict from lstm_forward"):
        R.lstm_backward({"x": 1}, None)
    with pytest.raises(TypeError, match="^cache: expected the cache dict from lstm_stack_forward"):
        R.lstm_stack_backward(cache, None)


def _bad_stack(**change: Any) -> None:
    """A 2-layer bidirectional stack with proj (T = 3, B = 2, I = 2, H = 3, P = 2), changed."""
    kw = dict(x=np.zeros((3, 2, 2)), params=_stack_params(2, 2, 2, 3, P=2), num_layers=2,
              bidirectional=True, hx=(np.zeros((4, 2, 2)), np.zeros((4, 2, 3))))
    R.lstm_stack_forward(**{**kw, **change})


@pytest.mark.parametrize("change,error,pattern", [
    (dict(reverse=True), ValueError, r"^reverse: a bidirectional stack already runs both ways"),
    (dict(num_layers=0), ValueError, r"^num_layers: expected a positive int"),
    (dict(num_layers=3), ValueError, r"^params: missing \['bias_hh_l2', .*'weight_ih_l2_rev"),
    (dict(bidirectional=False), ValueError, r"^params: unexpected \['bias_hh_l0_reverse', "),
    (dict(params=[1, 2]), TypeError, r"^params: expected a mapping"),
    (dict(params={**_stack_params(2, 2, 2, 3, P=2), "weight_ih_l1": np.zeros((12, 2))}),
     ValueError, r"^params\['weight_ih_l1'\]: expected shape \[4H, D\*R\] = \(12, 4\)"),
    (dict(params={**_stack_params(2, 2, 2, 3, P=2), "weight_hr_l1_reverse": np.zeros((3, 3))}),
     ValueError, r"^params\['weight_hr_l1_reverse'\]: expected shape \[P, H\] = \(2, 3\)"),
    (dict(hx=(np.zeros((2, 2, 2)), np.zeros((4, 2, 3)))), ValueError,
     r"^hx\[0\]: expected shape \[L\*D, B, R\] = \(4, 2, 2\)"),
    (dict(hx=np.zeros(3)), TypeError, r"^hx: expected None or a tuple"),
    (dict(dropout=1.5), ValueError, r"^dropout: expected a probability in \[0, 1\]"),
    (dict(x=np.zeros((3, 2))), ValueError, r"^x: expected a 3-D array \[T, B, I\]"),
    (dict(lengths=[4, 1]), ValueError, r"^lengths: expected 0 <= length <= T = 3"),
])
def test_stack_bad_arguments(change: dict[str, Any], error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        _bad_stack(**change)
