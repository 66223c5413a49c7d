"""LSTM.save / lstmx.load (the .npz layout) and pickling."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lstmx

VARIANTS: list[dict[str, Any]] = [
    {},
    dict(num_layers=2, bidirectional=True, proj_size=2, batch_first=True, dtype=np.float64,
         forget_bias=1.0),
    dict(peephole=True, clip=1.5, input_forget=True, layer_norm=True, zoneout_h=0.1,
         zoneout_c=0.2, recurrent_dropout=0.3, dropout=0.4, num_layers=2, reverse=True),
    dict(bias=False),
]


def _same(a: lstmx.LSTM, b: lstmx.LSTM) -> None:
    """Same configuration, parameters (bitwise, same dtype) and outputs."""
    assert repr(a) == repr(b) and a.dtype == b.dtype
    pa, pb = a.named_parameters(), b.named_parameters()
    assert list(pa) == list(pb)
    for k in pa:
        assert pa[k].dtype == pb[k].dtype and pa[k].flags.c_contiguous, k
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    x = np.random.default_rng(3).standard_normal((5, 2, a.input_size)).astype(a.dtype)
    ya, (ha, ca) = a(x)
    yb, (hb, cb) = b(x)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ca, cb)


@pytest.mark.parametrize("kw", VARIANTS)
def test_save_load_round_trip(kw: dict[str, Any], tmp_path: Path) -> None:
    m = lstmx.LSTM(3, 4, seed=7, **kw)
    for name, a in m.named_parameters().items():  # not the initial values
        a += np.linspace(0, 1, a.size).reshape(a.shape).astype(a.dtype)
    m.save(tmp_path / "m.npz")
    _same(m, lstmx.load(tmp_path / "m.npz"))
    m.save(str(tmp_path / "noext"))  # NumPy appends .npz
    _same(m, lstmx.load(str(tmp_path / "noext.npz")))
    buf = io.BytesIO()
    m.save(buf)
    buf.seek(0)
    _same(m, lstmx.load(buf))


def test_layout(tmp_path: Path) -> None:
    m = lstmx.LSTM(3, 4, num_layers=2, peephole=True, seed=0)
    m.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        assert int(f["lstmx_format"]) == lstmx.FORMAT_VERSION == 1
        cfg = json.loads(str(f["lstmx_config"]))
        assert cfg["input_size"] == 3 and cfg["num_layers"] == 2 and cfg["peephole"] is True
        assert cfg["dtype"] == "float32" and "seed" not in cfg
        assert sorted(f.files) == sorted([*m.named_parameters(), "lstmx_format",
                                          "lstmx_config"])
        np.testing.assert_array_equal(f["peephole_l1"], m.peephole_l1)


@pytest.mark.parametrize("kw", VARIANTS)
def test_pickle_round_trip(kw: dict[str, Any]) -> None:
    m = lstmx.LSTM(3, 4, seed=7, **kw)
    if not (m.bidirectional or m.reverse):
        m.step(np.zeros((1, 3), m.dtype))  # a cache to leave out
    m2 = pickle.loads(pickle.dumps(m))
    _same(m, m2)
    assert ("_step_args" in m.__dict__) == (not (m.bidirectional or m.reverse))
    assert "_step_args" not in m2.__dict__
    x = np.random.default_rng(4).standard_normal((4, 2, 3)).astype(m.dtype)
    if m.batch_first:
        x = x.swapaxes(0, 1).copy()
    y1, _, _ = m.forward_train(x)  # the mask seeds' generator continues alike
    y2, _, _ = m2.forward_train(x)
    np.testing.assert_array_equal(y1, y2)
    m2.weight_ih_l0[...] = 0  # a copy, not a view
    assert m.weight_ih_l0.any()


def _write(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _good(tmp_path: Path) -> dict[str, Any]:
    m = lstmx.LSTM(2, 3, seed=0)
    m.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as f:
        return {k: f[k] for k in f.files}


def test_load_errors(tmp_path: Path) -> None:
    g = _good(tmp_path)
    p = tmp_path / "bad.npz"
    with pytest.raises(ValueError, match="format version 2; this lstmx reads version 1"):
        lstmx.load(_write(p, **{**g, "lstmx_format": np.int64(2)}))
    no_version = {k: v for k, v in g.items() if k != "lstmx_format"}
    with pytest.raises(ValueError, match="no lstmx_format version"):
        lstmx.load(_write(p, **no_version))
    with pytest.raises(ValueError, match="no lstmx_config"):
        lstmx.load(_write(p, **{k: v for k, v in g.items() if k != "lstmx_config"}))
    with pytest.raises(ValueError, match="bad lstmx_config"):
        lstmx.load(_write(p, **{**g, "lstmx_config": np.str_("{not json")}))
    cfg = json.loads(str(g["lstmx_config"]))
    with pytest.raises(ValueError, match="bad lstmx_config.*hidden_size"):
        lstmx.load(_write(p, **{**g, "lstmx_config": np.str_(json.dumps({**cfg,
                                                                           "hidden_size": 0}))}))
    with pytest.raises(ValueError, match="bad lstmx_config.*colour"):
        lstmx.load(_write(p, **{**g, "lstmx_config": np.str_(json.dumps({**cfg, "colour": 1}))}))
    with pytest.raises(ValueError, match=r"missing keys \['bias_hh_l0'\]"):
        lstmx.load(_write(p, **{k: v for k, v in g.items() if k != "bias_hh_l0"}))
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        lstmx.load(_write(p, **g, extra=np.zeros(3)))
    with pytest.raises(ValueError, match=r"weight_hh_l0: expected shape \(12, 3\)"):
        lstmx.load(_write(p, **{**g, "weight_hh_l0": np.zeros((12, 4), np.float32)}))
    with pytest.raises(ValueError, match="bias_ih_l0: expected real numbers"):
        lstmx.load(_write(p, **{**g, "bias_ih_l0": np.array(["a"] * 12)}))
    with pytest.raises(ValueError, match="cannot read"):
        lstmx.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="cannot read"):
        lstmx.load(tmp_path / "junk.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        lstmx.load(tmp_path / "one.npy")


# ---- Keras weights (lstmx.keras; Keras itself is not needed) ----

def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _keras_lstm(x: np.ndarray, kernel: np.ndarray, recurrent_kernel: np.ndarray,
                bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """keras.layers.LSTM's computation, written out: x [B, T, I] -> (y [B, T, H], h, c)."""
    B, H = x.shape[0], recurrent_kernel.shape[0]
    h, c, ys = np.zeros((B, H)), np.zeros((B, H)), []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent_kernel + (0 if bias is None else bias)
        i, f, g, o = np.split(z, 4, axis=1)  # Keras's i, f, c, o
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        ys.append(h)
    return np.stack(ys, axis=1), h, c


@pytest.mark.parametrize("with_bias", [True, False])
def test_from_keras_matches_keras_math(with_bias: bool) -> None:
    rng = np.random.default_rng(5)
    I, H = 3, 4
    kernel, rk = rng.standard_normal((I, 4 * H)) * 0.5, rng.standard_normal((H, 4 * H)) * 0.5
    bias = rng.standard_normal(4 * H) if with_bias else None
    x = rng.standard_normal((2, 6, I))
    m = lstmx.keras.from_keras(kernel, rk, bias, batch_first=True)
    assert m.dtype == np.float64 and m.bias == with_bias and m.batch_first
    y, (h_n, c_n) = m(x)
    y_k, h_k, c_k = _keras_lstm(x, kernel, rk, bias)
    np.testing.assert_allclose(y, y_k, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n[0], h_k, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c_n[0], c_k, rtol=0, atol=1e-12)
    # the gate blocks: Keras's column block k is lstmx's row block k
    np.testing.assert_array_equal(m.weight_ih_l0[H:2 * H], kernel[:, H:2 * H].T)
    if with_bias:
        np.testing.assert_array_equal(m.bias_hh_l0, 0)
    back = lstmx.keras.to_keras(m)
    np.testing.assert_array_equal(back[0], kernel)
    np.testing.assert_array_equal(back[1], rk)
    if with_bias:
        np.testing.assert_array_equal(back[2], bias)
    else:
        assert back[2] is None


def test_to_keras_round_trip() -> None:
    m = lstmx.LSTM(5, 3, seed=1, forget_bias=1.0)
    kernel, rk, bias = lstmx.keras.to_keras(m)
    assert kernel.shape == (5, 12) and rk.shape == (3, 12) and kernel.dtype == np.float32
    assert bias is not None
    m2 = lstmx.keras.from_keras(kernel, rk, bias)
    x = np.random.default_rng(6).standard_normal((4, 2, 5)).astype(np.float32)
    np.testing.assert_array_equal(m(x)[0], m2(x)[0])
    kernel[...] = 0  # copies
    assert m.weight_ih_l0.any()
    y_k, _, _ = _keras_lstm(x.swapaxes(0, 1).astype(np.float64), *(
        a.astype(np.float64) for a in lstmx.keras.to_keras(m)))
    np.testing.assert_allclose(m(x)[0].swapaxes(0, 1), y_k, rtol=0, atol=1e-5)


def test_keras_errors() -> None:
    k, rk, b = np.zeros((3, 8)), np.zeros((2, 8)), np.zeros(8)
    fk = lstmx.keras.from_keras
    with pytest.raises(ValueError, match=r"recurrent_kernel: expected shape \[H, 4H\]"):
        fk(k, np.zeros((2, 7)), b)
    with pytest.raises(ValueError, match=r"kernel: expected shape \[I, 4H\]"):
        fk(np.zeros((3, 12)), rk, b)
    with pytest.raises(ValueError, match=r"bias: expected shape \[4H\]"):
        fk(k, rk, np.zeros(4))
    with pytest.raises(TypeError, match="recurrent_kernel: dtype float32 does not match"):
        fk(k, rk.astype(np.float32), b)
    with pytest.raises(ValueError, match="num_layers: a Keras LSTM layer gives 1"):
        fk(k, rk, b, num_layers=2)
    with pytest.raises(ValueError, match="hidden_size: a Keras LSTM layer gives 2"):
        fk(k, rk, b, hidden_size=3)
    assert fk(k, rk, b, dtype=np.float32).weight_ih_l0.dtype == np.float32
    with pytest.raises(ValueError, match="bidirectional=True"):
        lstmx.keras.to_keras(lstmx.LSTM(2, 3, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size=1"):
        lstmx.keras.to_keras(lstmx.LSTM(2, 3, proj_size=1))
    with pytest.raises(ValueError, match="no peephole"):
        lstmx.keras.to_keras(lstmx.LSTM(2, 3, peephole=True))
    with pytest.raises(TypeError, match="lstm: expected an lstmx.LSTM"):
        lstmx.keras.to_keras("layer")  # type: ignore[arg-type]


def test_seed_converters_reexported() -> None:
    assert lstmx.keras.to_seed_params is lstmx.reference.to_seed_params
    assert lstmx.keras.from_seed_params is lstmx.reference.from_seed_params
    m = lstmx.LSTM(3, 2, dtype=np.float64, seed=0)
    p = lstmx.keras.to_seed_params(m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    w_ih, w_hh, b_ih, b_hh = lstmx.keras.from_seed_params(p)
    np.testing.assert_array_equal(w_ih, m.weight_ih_l0)
    np.testing.assert_array_equal(b_ih + b_hh, m.bias_ih_l0 + m.bias_hh_l0)
