"""Smoke test of the benchmark: a tiny run of every section writes well-formed, positive numbers."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require

import lstmx
from lstmx import bench

TINY = "tiny:8:16:4:5"  # B = 4: the % of GEMM targets apply


@pytest.fixture
def torch() -> Iterator[Any]:
    """torch, with its and lstmx's thread counts restored after the test (bench sets both)."""
    t = require("torch")
    saved = t.get_num_threads(), lstmx.get_num_threads()
    yield t
    t.set_num_threads(saved[0])
    lstmx.set_num_threads(saved[1])


def _installed(*names: str) -> bool:
    """Whether the optional modules import (as the benchmark finds out)."""
    try:
        for n in names:
            importlib.import_module(n)
    except ImportError:
        return False
    return True


def test_tiny_run_writes_json_and_plot(torch: Any, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    # One thread: on a busy machine, 2-thread torch can wait on a descheduled thread.
    rc = bench.main(["--configs", TINY, "--target-config", TINY, "--targets", "--threads", "1",
                     "--repeats", "2", "--quiet", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "targets:" in out and "memory:" in out

    doc = json.loads((tmp_path / bench.JSON_NAME).read_text(encoding="utf-8"))
    with_ort = _installed("onnx", "onnxruntime")
    assert (tmp_path / bench.PLOT_NAME).exists() == _installed("matplotlib")
    assert doc["dtype"] == "float32" and doc["threads"] == 1
    rows = doc["results"]
    assert [(r["config"]["name"], r["mode"]) for r in rows] == [("tiny", "infer"),
                                                                ("tiny", "train")]
    for r in rows:
        peers = {"torch", "reference"} | ({"onnxruntime"} if with_ort
                                          and r["mode"] == "infer" else set())
        ours = {"lstmx", "frozen"} if r["mode"] == "infer" else {"lstmx"}
        assert set(r["impls"]) == ours | peers
        assert all(t["median_s"] > 0 and t["gflops"] > 0 and t["reps"] == 2
                   for t in r["impls"].values())
        # --repeats 2: two rounds of one call each, every implementation in turn
        assert all(len(t["round_medians_s"]) == 2 for t in r["impls"].values())
        assert r["gemm_gflops"] > 0 and r["pct_of_gemm"] > 0
        assert set(r["speedup_vs"]) == peers
        assert all(v > 0 for v in r["speedup_vs"].values())
        best = {k: v for k, v in r["speedup_vs"].items() if k in bench.BEST_OF}
        assert r["best_peer"] in best and r["speedup_vs_best"] == min(best.values())
        frozen = r["frozen_speedup_vs_best"]
        assert (frozen is not None and frozen > 0) == (r["mode"] == "infer")
    # Every peer computed what lstmx computes (ONNX Runtime: with its gates reordered).
    diffs = doc["max_rel_diff"]["tiny"]
    assert ("onnxruntime_y" in diffs) == with_ort and "frozen_y" in diffs
    assert all(0 <= v < 1e-3 for v in diffs.values()), diffs
    diffs = doc["float64"]["max_rel_diff"]["tiny"]
    assert "torch_dw_hh" in diffs and all(0 <= v < 1e-9 for v in diffs.values()), diffs

    assert [r["mode"] for r in doc["float64"]["results"]] == ["infer", "train"]
    assert all(set(r["impls"]) == {"lstmx", "torch"} and r["speedup_vs"]["torch"] > 0
               for r in doc["float64"]["results"])
    assert all(m["speedup"] > 0 and m["1"]["median_s"] > 0
               for m in doc["thread_scaling"]["modes"].values())
    mem = doc["memory"]
    assert set(mem["bytes"]) == {"lstmx", "torch"} and mem["method"] in ("VmHWM", "ru_maxrss")
    assert all(b >= 0 for b in mem["bytes"].values())  # growth: a tiny step may need no page
    assert mem["bytes"]["torch"] > 0 and mem["ratio"] >= 0
    targets = doc["targets"]
    assert len(targets) == 10 and [t["target"][:3] for t in targets] == [
        "(1)", "(1)", "(1)", "(1)", "(1)", "(2)", "(2)", "(3)", "(4)", "(5)"]
    # Measured: all but the two on b1-h128.
    assert [t["met"] is not None for t in targets] == [True, True, False, True, False, True,
                                                       True, True, True, True]


def test_rounds_share_out_the_budget() -> None:
    """Each round gets its part of the calls and time; the pooled timing keeps every call."""
    assert [b.repeats for b in bench.Budget(repeats=5).rounds(3)] == [1, 2, 2]
    assert [b.repeats for b in bench.Budget(repeats=2).rounds(3)] == [1, 1]
    parts = bench.Budget(min_reps=5, min_time=0.3, max_reps=200, max_time=2.0,
                         cap_reps=3).rounds(3)
    assert len(parts) == 3 and parts[0] == bench.Budget(2, 0.3 / 3, 67, 2.0 / 3, 1)
    assert bench.Budget().rounds(1) == [bench.Budget()]
    calls: list[str] = []

    def call(name: str) -> Callable[[], object]:
        return lambda: calls.append(name)

    prog = bench.Progress(6, enabled=False)
    t = bench.measure_rounds(prog, "x", [(n, call(n), bench.Budget(repeats=3), 0.0)
                                         for n in ("a", "b")], 3)
    # in turn, a warm-up call before each round's timed one
    assert calls == ["a", "a", "b", "b"] * 3 and prog.done == 6
    assert all(len(v.times) == 3 and v.round_medians is not None and len(v.round_medians) == 3
               for v in t.values())


def test_config_specs() -> None:
    assert bench.parse_config("b64-h512") == bench.GRID[5]
    assert bench.parse_config(" x:1:2:3:4 ") == bench.BenchConfig("x", 1, 2, 3, 4)
    for bad in ("nope", "x:1:2:3", "x:1:2:0:4", ":1:2:3:4", "x:1:2:a:4"):
        with pytest.raises(argparse.ArgumentTypeError, match="config"):
            bench.parse_config(bad)
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--configs", ","])


def test_layer_rows(torch: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--layer: the variable-length, 2-layer bidirectional, LayerNorm and streaming rows
    against their peers, each peer computing what lstmx computes, and the layer targets."""
    rc = bench.main(["--configs", TINY, "--target-config", TINY, "--layer", "--no-targets",
                     "--threads", "1", "--repeats", "2", "--quiet", "--no-plot", "--out",
                     str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "layer variants" in out and "varlen: >= 1.5x torch" in out
    doc = json.loads((tmp_path / bench.JSON_NAME).read_text(encoding="utf-8"))
    rows = {(r["name"], r["mode"]): r for r in doc["layer"]}
    assert set(rows) == {(n, m) for n in ("varlen", "bidir2", "layernorm")
                         for m in ("infer", "train")} | {("stream", "infer")}
    for r in rows.values():
        peers = {"varlen": {"lstmx", "lstmx equal", "torch"}, "bidir2": {"lstmx", "torch"},
                 "layernorm": {"lstmx", "torch ops"},
                 "stream": {"lstmx", "lstmx frozen", "lstmx float16", "lstmx int8", "torch",
                            "torch int8", "gemv"}}[r["name"]]
        assert set(r["timings"]) == peers and r["speedup"] > 0
        assert 0 <= r["mismatch"] < 1e-3, r
    assert all(rows[("varlen", m)]["per_token"] > 0 for m in ("infer", "train"))
    assert [t["met"] is not None for t in doc["targets"]] == [True] * 5
    assert "us a step, frozen" in out and "(torch" in out and "GEMV of the weights" in out
    assert "float16 weights" in out and "int8 weights" in out and ", int8 " in out
