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
    dict(num_layers=2, bidirectional=True, proj_size=2, batch_first=True, dtype=np.float64),
    dict(peephole=True, clip=1.5, input_forget=True, layer_norm=True, zoneout_h=0.1,
         zoneout_c=0.2, recurrent_dropout=0.3, dropout=0.4, num_layers=2, forget_bias=1.0,
         reverse=True),
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
    assert "_step_cache" not in m2.__dict__
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
