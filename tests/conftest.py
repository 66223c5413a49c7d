"""Shared helpers for the lstmx tests."""

from __future__ import annotations

import importlib
import os
from collections import Counter
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import lstmx
from lstmx import _core

DTYPES = [np.float64, np.float32]
ISAS = list(lstmx.config()["isas_available"])  # type: ignore[call-overload]


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test under each instruction-set level this CPU supports."""
    old = str(lstmx.config()["isa"])
    _core.set_isa(request.param)
    try:
        yield request.param
    finally:
        _core.set_isa(old)


def make_case(T: int, B: int, I: int, H: int, dtype: Any = np.float64, seed: int = 0,
              batch_first: bool = False, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Random inputs and parameters for one LSTM call."""
    rng = np.random.default_rng(seed)

    def r(*shape: int, s: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(dtype)

    return dict(x=r(B, T, I) if batch_first else r(T, B, I), w_ih=r(4 * H, I, s=scale),
                w_hh=r(4 * H, H, s=scale), b_ih=r(4 * H, s=scale), b_hh=r(4 * H, s=scale),
                h0=r(B, H), c0=r(B, H))


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: Any, what: str = "") -> None:
    """float64: ~1e-10; float32: ~1e-5 relative to the array's scale."""
    tol = 1e-10 if np.dtype(dtype) == np.float64 else 1e-5
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def numerical_grads(loss: Any, arrays: dict[str, np.ndarray],
                    eps: float = 1e-6) -> dict[str, np.ndarray]:
    """Central differences of ``loss()`` with respect to every entry of every array (in place)."""
    out = {}
    for k, a in arrays.items():
        num = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            lp = loss()
            a[idx] = old - eps
            lm = loss()
            a[idx] = old
            num[idx] = (lp - lm) / (2 * eps)
        out[k] = num
    return out


GRAD_NAMES = dict(x="dx", h0="dh0", c0="dc0", w_ih="dw_ih", w_hh="dw_hh", b_ih="db_ih",
                  b_hh="db_hh")


def require(name: str) -> ModuleType:
    """Import an optional peer. Skips locally if absent; fails under CI, where it must run."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{name} is not installed")


class Record:
    """The numbers CI checks (fuzz cases, soak calls, RSS growth, thread counts...), printed at
    the end of the run."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


RECORD = Record()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = [f"{k}: {v}" for k, v in {**RECORD.counts, **RECORD.values}.items()]
    if lines:
        terminalreporter.section("reliability numbers")
        for line in sorted(lines):
            terminalreporter.write_line(line)
