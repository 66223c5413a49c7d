"""lstmx: a fast, complete LSTM for the CPU.

C++/Eigen kernels, parallel with OpenMP, behind a thin NumPy API. Gate order i, f, g, o and
parameter layout as in ``torch.nn.LSTM``. See :mod:`lstmx.functional` for the shapes.
``lstmx.torch.LSTM`` (``import lstmx.torch``, needs torch) is a drop-in for ``torch.nn.LSTM``;
``lstmx.jax.lstm`` (``import lstmx.jax``, needs jax) is differentiable under ``jax.jit``/``grad``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import numpy as np

from . import _core, keras, reference
from .functional import (LSTMGrads, Tape, lstm, lstm_backward, lstm_cell, lstm_cell_backward,
                         lstm_cell_train, lstm_train)
from .layer import FORMAT_VERSION, LSTM, FrozenLSTM, LayerTape, StreamState, load

try:
    __version__ = version("lstmx")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

_MAX_THREADS: int = _core.max_threads

__all__ = [
    "LSTM", "FrozenLSTM", "LayerTape", "StreamState", "load", "FORMAT_VERSION", "LSTMGrads", "Tape", "lstm",
    "lstm_train", "lstm_backward", "lstm_cell", "lstm_cell_train", "lstm_cell_backward",
    "set_num_threads", "get_num_threads", "show_config", "config", "reference", "keras",
    "__version__",
]


def set_num_threads(n: int) -> None:
    """Set the number of OpenMP threads lstmx's kernels use (``1 <= n <= 1024``).

    Safe at any time: a call already running keeps the count it started with."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= _MAX_THREADS:
        raise ValueError(f"n: expected a positive int, at most {_MAX_THREADS}, got {n!r}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of threads lstmx's kernels use (1 without OpenMP)."""
    return int(_core.get_num_threads())


def config() -> dict[str, object]:
    """Build and run-time facts: version, threads, the ISA in use and those available, OpenMP,
    Eigen version, SIMD of the active kernels, compiler."""
    info = dict(_core.build_info())
    return {"version": __version__, "threads": get_num_threads(), **info}


def show_config() -> None:
    """Print :func:`config`, one fact a line."""
    for k, v in config().items():
        print(f"{k:>14}: {', '.join(v) if isinstance(v, list) else v}")
