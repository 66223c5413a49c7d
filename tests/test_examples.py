"""The examples under examples/ run end to end with --quick and report what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lstmx
from conftest import require

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LSTMX_DIR = str(Path(lstmx.__file__).resolve().parent.parent)  # the lstmx these tests import


def env(**extra: str) -> dict[str, str]:
    """This environment, with the lstmx under test first on the path of the examples."""
    path = os.pathsep.join(filter(None, [LSTMX_DIR, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


def run_example(name: str, *args: str) -> str:
    """Run ``examples/<name> --quick *args``; assert exit code 0; return its stdout."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", *args],
                          capture_output=True, text=True, timeout=120,
                          env=env(MPLBACKEND="Agg", PYTHONWARNINGS="error"))
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def assert_plot(path: Path, out: str) -> None:
    """The example wrote its PNG, or (matplotlib absent) said that it skipped it."""
    if has_matplotlib():
        assert path.stat().st_size > 10_000, out
    else:
        assert "matplotlib" in out and not path.exists(), out


def test_char_lm(tmp_path: Path) -> None:
    out = run_example("char_lm.py", "--out", str(tmp_path))
    m = re.search(r"validation: ([\d.]+) bits/char \(LSTM\) vs ([\d.]+) bits/char \(unigram", out)
    assert m, out
    bpc, unigram = map(float, m.groups())
    assert 3.5 < unigram < 5.0 and bpc < 0.75 * unigram, out  # well below the baseline
    assert re.search(r"sample \(temperature 0.7\):\n  The \S", out), out
    assert_plot(tmp_path / "char_lm_loss.png", out)


def test_forecast(tmp_path: Path) -> None:
    out = run_example("forecast.py", "--out", str(tmp_path))
    rmse = {name: float(v) for name, v in
            re.findall(r"^  (lstmx LSTM|naive|linear AR)\S* .*?([\d.]+)$", out, re.M)}
    assert set(rmse) == {"lstmx LSTM", "naive", "linear AR"}, out
    assert rmse["lstmx LSTM"] < 0.7 * rmse["linear AR"] < 0.7 * rmse["naive"], out
    assert_plot(tmp_path / "forecast.png", out)


def test_torch_swap() -> None:
    require("torch")
    out = run_example("torch_swap.py")
    m = re.search(r"largest loss difference over 40 steps: (\S+) \(tolerance", out)
    assert m and float(m.group(1)) <= 1e-3, out
    assert re.search(r"lstmx.torch.LSTM +[\d.]+ ms per training step", out), out
    assert re.search(r"speed ratio: lstmx.torch.LSTM is [\d.]+x as fast", out), out


@pytest.mark.parametrize("name", ["char_lm.py", "forecast.py", "torch_swap.py"])
def test_help(name: str) -> None:
    if name == "torch_swap.py":
        require("torch")
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--help"], capture_output=True,
                          text=True, env=env(), timeout=60)
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--steps" in proc.stdout
