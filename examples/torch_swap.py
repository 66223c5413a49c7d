"""The same PyTorch model with ``torch.nn.LSTM`` and with ``lstmx.torch.LSTM`` swapped in.

    python examples/torch_swap.py         # seconds on 2 cores; needs torch (pip install torch==2.13.0)

The model: one-hot symbols -> LSTM -> ``nn.Linear`` -> cross-entropy, on a delayed-copy task
(at every step, name the symbol seen ``--delay`` steps earlier). Both models start from the
same weights (``lstmx.torch.LSTM`` takes ``nn.LSTM``'s ``state_dict()``), see the same batches
and train with ``torch.optim.Adam``; the only change is the line that builds the LSTM. It
prints both loss curves' largest difference and the median time of a training step (forward,
backward and Adam) of each, measured alternately step by step. Exits 1 if the losses differ by
more than ``--tol``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import lstmx
import lstmx.torch

from _common import Progress


class Model(nn.Module):
    """One-hot ``[T, B, K]`` -> ``lstm`` -> linear -> logits ``[T, B, K]``."""

    def __init__(self, lstm: nn.Module, hidden: int, symbols: int) -> None:
        super().__init__()
        self.lstm, self.head = lstm, nn.Linear(hidden, symbols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.head(y)


def batch(gen: torch.Generator, T: int, B: int, K: int, delay: int, dtype: torch.dtype
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[T, B, K]`` (one-hot) and targets ``[T - delay, B]``: the symbol ``delay``
    steps back."""
    sym = torch.randint(0, K, (T, B), generator=gen)
    return nn.functional.one_hot(sym, K).to(dtype), sym[:T - delay]


def train_step(model: Model, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor,
               delay: int) -> tuple[float, float]:
    """One Adam step; returns the loss and the seconds it took."""
    t0 = time.perf_counter()
    logits = model(x)[delay:]  # [T - delay, B, K]
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item(), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Train both models, report; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="training steps (each model)")
    ap.add_argument("--hidden", type=int, default=128, help="LSTM hidden units")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--seq", type=int, default=100, help="steps per sequence")
    ap.add_argument("--symbols", type=int, default=16, help="distinct symbols")
    ap.add_argument("--delay", type=int, default=4, help="name the symbol this many steps back")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    ap.add_argument("--tol", type=float, default=None,
                    help="largest loss difference allowed (default 1e-3 in float32, 1e-9 in "
                         "float64)")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads of torch and of lstmx alike (more gain little at this size "
                         "and lose much on a busy machine)")
    ap.add_argument("--quick", action="store_true", help="a few seconds: 40 steps, 64 hidden")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.hidden = 40, 64
    if min(args.steps, args.hidden, args.batch, args.symbols, args.delay, args.threads) < 1 \
            or args.delay >= args.seq:
        ap.error("--steps, --hidden, --batch, --symbols, --delay, --threads must be positive "
                 "and --delay < --seq")
    dtype = getattr(torch, args.dtype)
    tol = args.tol if args.tol is not None else 1e-3 if args.dtype == "float32" else 1e-9
    torch.set_num_threads(args.threads)
    lstmx.set_num_threads(args.threads)

    I, H, K = args.symbols, args.hidden, args.symbols
    torch.manual_seed(args.seed)
    ref = Model(nn.LSTM(I, H, dtype=dtype), H, K).to(dtype)
    swap = copy.deepcopy(ref)
    swap.lstm = lstmx.torch.LSTM(I, H, dtype=dtype)  # <- the swap
    swap.lstm.load_state_dict(ref.lstm.state_dict())  # the same initial weights
    models = {"torch.nn.LSTM": ref, "lstmx.torch.LSTM": swap}
    opts = {name: torch.optim.Adam(m.parameters(), lr=args.lr) for name, m in models.items()}
    print(f"model: one-hot({K}) -> LSTM({I}, {H}) -> Linear({H}, {K}), {args.dtype}; "
          f"delayed copy ({args.delay} steps back), batch {args.batch} x {args.seq}, "
          f"{args.steps} Adam steps, {args.threads} thread(s), torch {torch.__version__}, "
          f"lstmx {lstmx.__version__} ({lstmx.config()['isa']})")

    gen = torch.Generator().manual_seed(args.seed)
    losses: dict[str, list[float]] = {name: [] for name in models}
    times: dict[str, list[float]] = {name: [] for name in models}
    bar = Progress(args.steps)
    for step in range(1, args.steps + 1):
        x, target = batch(gen, args.seq, args.batch, K, args.delay, dtype)
        for name, m in models.items():  # alternately, so that both see the same machine
            loss, dt = train_step(m, opts[name], x, target, args.delay)
            losses[name].append(loss)
            times[name].append(dt)
        bar.update(step, f"loss {losses['torch.nn.LSTM'][-1]:.4f} / "
                         f"{losses['lstmx.torch.LSTM'][-1]:.4f}")

    diff = max(abs(a - b) for a, b in zip(*losses.values()))
    print(f"loss: first {losses['torch.nn.LSTM'][0]:.4f}, last {losses['torch.nn.LSTM'][-1]:.4f}"
          f" (torch.nn.LSTM) / {losses['lstmx.torch.LSTM'][-1]:.4f} (lstmx.torch.LSTM)")
    print(f"largest loss difference over {args.steps} steps: {diff:.2e} (tolerance {tol:.0e})")
    skip = min(5, args.steps - 1)  # the first steps warm caches and allocators up
    ms = {name: 1e3 * statistics.median(t[skip:]) for name, t in times.items()}
    for name, v in ms.items():
        print(f"  {name:<17} {v:8.3f} ms per training step (median of {args.steps - skip})")
    print(f"speed ratio: lstmx.torch.LSTM is {ms['torch.nn.LSTM'] / ms['lstmx.torch.LSTM']:.2f}x"
          f" as fast as torch.nn.LSTM")
    if not diff <= tol:
        print("FAILED: the losses differ")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
