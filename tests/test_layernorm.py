"""Layer-normalised LSTM (``layer_norm=``): the fused C++ forward against a NumPy oracle, its
backward against central differences, thread-count invariance, and the boundary checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import GRAD_NAMES, assert_close, make_case, numerical_grads

import lstmx
from lstmx import _core
from lstmx import functional as F

ISAS = list(lstmx.config()["isas_available"])  # type: ignore[call-overload]
EPS = 1e-5


def _ln(v: np.ndarray, gain: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    m = v.mean(-1, keepdims=True)
    out = (v - m) / np.sqrt(((v - m) ** 2).mean(-1, keepdims=True) + EPS) * gain
    return out if bias is None else out + bias


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def oracle(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray,
           b_hh: np.ndarray, h0: np.ndarray, c0: np.ndarray, *, layer_norm: tuple[Any, ...],
           batch_first: bool = False, lengths: Any = None, reverse: bool = False,
           peephole: np.ndarray | None = None, w_hr: np.ndarray | None = None,
           zoneout_h: float = 0.0, zoneout_c: float = 0.0, recurrent_dropout: float = 0.0,
           training: bool = False, seed: int = 0, stream: int = 0) -> tuple[np.ndarray, ...]:
    """The LN-LSTM of docs/variants.md, one sequence and step at a time, in float64."""
    x, w_ih, w_hh, h0, c0 = (np.asarray(a, np.float64) for a in (x, w_ih, w_hh, h0, c0))
    gx, gh, gc, bc = (np.asarray(a, np.float64) for a in layer_norm)
    if batch_first:
        x = x.transpose(1, 0, 2)
    T, B, _ = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    b = np.asarray(b_ih, np.float64) + np.asarray(b_hh, np.float64)
    lens = [T] * B if lengths is None else [int(n) for n in lengths]
    md = np.ones((B, R))
    if training and recurrent_dropout:
        md = (_core.uniform(seed, stream + 2, B * R).reshape(B, R) >= recurrent_dropout) / (
            1 - recurrent_dropout)
    uc = _core.uniform(seed, stream + 0, T * B * H).reshape(T, B, H)
    uh = _core.uniform(seed, stream + 1, T * B * R).reshape(T, B, R)
    y, hn, cn = np.zeros((T, B, R)), h0.copy(), c0.copy()
    for k in range(B):
        h, c = h0[k], c0[k]
        for s in range(lens[k]):
            t = lens[k] - 1 - s if reverse else s
            z = _ln(x[t, k] @ w_ih.T, gx) + _ln((h * md[k]) @ w_hh.T, gh) + b
            zi, zf, zg, zo = np.split(z, 4)
            if peephole is not None:
                zi, zf = zi + peephole[0] * c, zf + peephole[1] * c
            i, f, g = _sigmoid(zi), _sigmoid(zf), np.tanh(zg)
            c_new = f * c + i * g
            if peephole is not None:
                zo = zo + peephole[2] * c_new
            r = _sigmoid(zo) * np.tanh(_ln(c_new, gc, bc))
            h_new = r if w_hr is None else r @ np.asarray(w_hr, np.float64).T
            mc = (uc[s, k] < zoneout_c) if training else zoneout_c
            mh = (uh[s, k] < zoneout_h) if training else zoneout_h
            c = mc * c + (1 - mc) * c_new
            h = mh * h + (1 - mh) * h_new
            y[t, k] = h
        hn[k], cn[k] = h, c
    return (y.transpose(1, 0, 2) if batch_first else y), hn, cn


def ln_params(H: int, dtype: Any, seed: int = 1) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple((1 + 0.3 * rng.standard_normal(n)).astype(dtype) if k < 3
                 else (0.3 * rng.standard_normal(n)).astype(dtype)
                 for k, n in enumerate((4 * H, 4 * H, H, H)))


# name -> (case options, variant keywords); every one with layer norm
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "ln": ({}, {}),
    "peephole_zoneout_dropout": ({}, dict(peephole=True, zoneout_h=0.3, zoneout_c=0.4,
                                          recurrent_dropout=0.25)),
    "lengths_reverse_batch_first": (dict(batch_first=True),
                                    dict(lengths=[3, 0, 4, 1], reverse=True)),
    "projection": ({}, dict(proj=2, zoneout_h=0.2)),
}


def setup(name: str, dtype: Any, T: int = 4, B: int = 4, I: int = 3,
          H: int = 5) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and keywords of one case (all arrays float ``dtype``, keyed like lstm_train)."""
    opts, var = CASES[name]
    c = make_case(T, B, I, H, dtype, seed=3, batch_first=opts.get("batch_first", False))
    kw: dict[str, Any] = dict(var, batch_first=opts.get("batch_first", False))
    rng = np.random.default_rng(7)
    if kw.pop("peephole", False):
        c["peephole"] = (0.5 * rng.standard_normal((3, H))).astype(dtype)
    if P := kw.pop("proj", 0):
        c["w_hr"] = (0.5 * rng.standard_normal((P, H))).astype(dtype)
        c["w_hh"] = (0.5 * rng.standard_normal((4 * H, P))).astype(dtype)
        c["h0"] = c["h0"][:, :P].copy()
    for j, a in enumerate(ln_params(H, dtype)):
        c[f"ln{j}"] = a
    return c, kw


def call(c: dict[str, np.ndarray], kw: dict[str, Any], training: bool, seed: int = 11) -> Any:
    args = {k: v for k, v in c.items() if not k.startswith("ln")}
    ln = tuple(c[f"ln{j}"] for j in range(4))
    if training:
        return lstmx.lstm_train(**args, **kw, layer_norm=ln, seed=seed)
    kw = {k: v for k, v in kw.items() if k != "recurrent_dropout"}
    return lstmx.lstm(**args, **kw, layer_norm=ln)


def expected(c: dict[str, np.ndarray], kw: dict[str, Any], training: bool,
             seed: int = 11) -> tuple[np.ndarray, ...]:
    args = {k: v for k, v in c.items() if not k.startswith("ln")}
    if not training:
        kw = {k: v for k, v in kw.items() if k != "recurrent_dropout"}
    return oracle(**args, **kw, layer_norm=tuple(c[f"ln{j}"] for j in range(4)),
                  training=training, seed=seed)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_oracle(name: str, training: bool, dtype: Any, isa: str) -> None:
    c, kw = setup(name, dtype, H=19)  # H = 19: full vectors and a tail
    old = str(lstmx.config()["isa"])
    _core.set_isa(isa)
    try:
        got = call(c, kw, training)
    finally:
        _core.set_isa(old)
    for a, e, what in zip(got[:3], expected(c, kw, training), ("y", "h_n", "c_n")):
        assert a.dtype == dtype
        assert_close(a, e, dtype, what)


def _loss_weights(y: np.ndarray, hn: np.ndarray, cn: np.ndarray) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(5)
    return tuple(rng.standard_normal(a.shape) for a in (y, hn, cn))


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_finite_differences(name: str) -> None:
    """Every gradient (x, h0, c0, weights, biases, peepholes, w_hr, the four LN arrays) against
    central differences of lstmx's own float64 forward (the masks are fixed by the seed); and
    float32's gradients agree with float64's."""
    c, kw = setup(name, np.float64)
    y, hn, cn, tape = call(c, kw, True)
    wy, wh, wc = _loss_weights(y, hn, cn)

    def loss() -> float:
        y, hn, cn, _ = call(c, kw, True)
        return float((y * wy).sum() + (hn * wh).sum() + (cn * wc).sum())

    g = lstmx.lstm_backward(tape, wy, wh, wc)
    num = numerical_grads(loss, c)
    names = dict(GRAD_NAMES, peephole="dpeephole", w_hr="dw_hr")
    assert g.dlayer_norm is not None
    for k, n in num.items():
        got = g.dlayer_norm[int(k[2])] if k.startswith("ln") else getattr(g, names[k])
        np.testing.assert_allclose(got, n, rtol=1e-5, atol=1e-7, err_msg=k)
    # float32: the same gradients, to float32's precision
    c32 = {k: v.astype(np.float32) for k, v in c.items()}
    *_, tape32 = call(c32, kw, True)
    g32 = lstmx.lstm_backward(tape32, *(a.astype(np.float32) for a in (wy, wh, wc)))
    for a, e in zip(g32, g):
        if isinstance(e, tuple):
            for a1, e1 in zip(a, e):
                np.testing.assert_allclose(a1, e1, rtol=1e-3, atol=1e-4 * np.abs(e1).max())
        elif e is not None:
            assert a.dtype == np.float32
            np.testing.assert_allclose(a, e, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(e).max()))


def test_inference_matches_training_without_masks() -> None:
    c, kw = setup("lengths_reverse_batch_first", np.float32, H=21)
    for a, b in zip(call(c, kw, False), call(c, kw, True)[:3]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("proj", [0, 7])
@pytest.mark.parametrize("B", [19, 4])
def test_thread_count_bitwise(dtype: Any, proj: int, B: int) -> None:
    """Outputs and every gradient are bitwise the same for 1, 2 and 3 threads (B = 19 entries:
    blocks of the microkernel's rows that do not divide evenly; B = 4: one block, the other
    threads share the input projection; lengths that shrink the batch)."""
    T, I, H = 6, 24, 40
    c = make_case(T, B, I, H, dtype, seed=9)
    rng = np.random.default_rng(2)
    kw: dict[str, Any] = dict(lengths=rng.integers(0, T + 1, B), zoneout_h=0.1,
                              recurrent_dropout=0.2, seed=4, layer_norm=ln_params(H, dtype),
                              peephole=(0.3 * rng.standard_normal((3, H))).astype(dtype))
    if proj:
        kw["w_hr"] = (0.3 * rng.standard_normal((proj, H))).astype(dtype)
        c["w_hh"] = (0.3 * rng.standard_normal((4 * H, proj))).astype(dtype)
        c["h0"] = c["h0"][:, :proj].copy()
    old = lstmx.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            lstmx.set_num_threads(threads)
            y, hn, cn, tape = lstmx.lstm_train(**c, **kw)
            g = lstmx.lstm_backward(tape, np.ones_like(y) + y, hn, cn)
            yi = lstmx.lstm(**c, **{k: v for k, v in kw.items()
                                    if k not in ("recurrent_dropout", "seed")})
            flat = [y, hn, cn, *yi, *(a for a in g[:-1] if a is not None), *g.dlayer_norm]
            runs.append(flat)
    finally:
        lstmx.set_num_threads(old)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


def test_layer_norm_shapes_and_types() -> None:
    c, kw = setup("ln", np.float64)
    args = {k: v for k, v in c.items() if not k.startswith("ln")}
    ln = [c[f"ln{j}"] for j in range(4)]
    for j, nm in enumerate(("gain_x", "gain_h", "gain_c", "bias_c")):
        bad = list(ln)
        bad[j] = np.ones(len(ln[j]) + 1)
        with pytest.raises(ValueError, match=rf"layer_norm\[{j}\] \({nm}\)"):
            lstmx.lstm(**args, layer_norm=tuple(bad))
        bad[j] = ln[j].astype(np.float32)
        with pytest.raises(TypeError, match=rf"layer_norm\[{j}\] \({nm}\).*dtype"):
            lstmx.lstm_train(**args, layer_norm=tuple(bad))
    with pytest.raises(TypeError, match="layer_norm: expected a tuple"):
        lstmx.lstm(**args, layer_norm=tuple(ln[:3]))
    with pytest.raises(TypeError, match="layer_norm: expected a tuple"):
        lstmx.lstm(**args, layer_norm=ln[0])
    # the private core checks too
    a = F._check_args(args["x"], args["w_ih"], args["w_hh"], args["b_ih"], args["b_hh"],
                      args["h0"], args["c0"], False, False)
    with pytest.raises(ValueError, match=r"layer_norm\[1\] \(gain_h\): expected shape"):
        _core.forward(a.x, a.w_ih, a.w_hh, a.bias, a.h0, a.c0, False, False,
                      layer_norm=(ln[0], ln[2], ln[2], ln[3]))
    with pytest.raises(TypeError, match="layer_norm"):
        _core.forward(a.x, a.w_ih, a.w_hh, a.bias, a.h0, a.c0, False, False, layer_norm=ln[0])
    with pytest.raises(ValueError, match="naive"):
        _core.forward(a.x, a.w_ih, a.w_hh, a.bias, a.h0, a.c0, False, False, True,
                      layer_norm=tuple(ln))


def test_without_layer_norm_no_gradient() -> None:
    c = make_case(3, 2, 3, 4)
    y, _, _, tape = lstmx.lstm_train(**c)
    assert lstmx.lstm_backward(tape, np.ones_like(y)).dlayer_norm is None


@pytest.mark.parametrize("T, B, I, H, lengths", [(1, 1, 1, 1, None), (3, 2, 1, 2, [0, 2]),
                                                 (2, 3, 2, 3, [0, 0, 0]), (0, 2, 2, 3, None)])
def test_edge_sizes(T: int, B: int, I: int, H: int, lengths: Any) -> None:
    c = make_case(T, B, I, H, seed=2)
    ln = ln_params(H, np.float64)
    y, hn, cn, tape = lstmx.lstm_train(**c, lengths=lengths, layer_norm=ln)
    for a, e in zip((y, hn, cn), oracle(**c, lengths=lengths, layer_norm=ln)):
        assert_close(a, e, np.float64)
    g = lstmx.lstm_backward(tape, np.ones_like(y), np.ones_like(hn), np.ones_like(cn))
    assert g.dlayer_norm is not None and all(np.isfinite(a).all() for a in g.dlayer_norm)
    if not (lengths and max(lengths)) and T and lengths is not None:
        assert all(not a.any() for a in g.dlayer_norm)  # no step ran
