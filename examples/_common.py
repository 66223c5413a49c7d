"""What the NumPy examples share: their common options, gradient clipping, a progress bar
(the one ``python -m lstmx demo`` draws) and a plot. The Adam they train with is in
``char_lm.py``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lstmx._progress import Progress  # noqa: F401  (the examples import it from here)


def add_common_args(ap: argparse.ArgumentParser, png: str) -> None:
    """``--lr``, ``--seed``, ``--threads`` and ``--out`` (the directory of ``png``)."""
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--threads", type=int, default=1,
                    help="lstmx threads (NumPy's BLAS: OPENBLAS_NUM_THREADS, default 1); a "
                         "model this small gains little from more, and loses much on a busy "
                         "machine")
    ap.add_argument("--out", default=".", help=f"directory for {png}")


def clip_grad_norm(grads: list[npt.NDArray[np.float32]], max_norm: float = 1.0
                   ) -> list[npt.NDArray[np.float32]]:
    """``grads`` scaled down together so that their global L2 norm is at most ``max_norm``."""
    norm = float(np.sqrt(sum(float((g * g).sum()) for g in grads)))
    if norm <= max_norm:
        return grads
    return [g * np.float32(max_norm / norm) for g in grads]


def save_plot(path: str, title: str, xlabel: str, ylabel: str,
              curves: Sequence[tuple[Sequence[float], Sequence[float], str, dict[str, Any]]]
              ) -> str | None:
    """Plot ``curves`` (``(xs, ys, label, matplotlib style)`` each) into the PNG ``path``;
    returns ``path``, or ``None`` (and says so) if matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no plot ({path} not written)")
        return None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for xs, ys, label, style in curves:
        ax.plot(xs, ys, label=label, **style)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
