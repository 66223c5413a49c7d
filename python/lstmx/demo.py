"""Train a small LSTM classifier end to end with lstmx's own forward and backward.

The task, generated in code: a sequence of ``T`` one-hot symbols drawn from ``K``; the label is
the symbol that occurs most often (sequences with a tie are discarded). Solving it needs memory
of the whole sequence. The model is ``lstmx.LSTM`` -> linear head on the last hidden state ->
softmax cross-entropy; the head, the loss and an Adam optimizer are written in NumPy here.

Run it with ``python -m lstmx demo`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse

import numpy as np
import numpy.typing as npt

from . import get_num_threads, set_num_threads
from ._progress import Progress
from .layer import LSTM, LayerTape

__all__ = ["make_batch", "main"]

F32 = npt.NDArray[np.float32]
K, T, H, BATCH = 4, 20, 48, 64  # symbols, sequence length, hidden units, batch size


def make_batch(rng: np.random.Generator, n: int) -> tuple[F32, npt.NDArray[np.int64]]:
    """``n`` random sequences ``x [T, n, K]`` (one-hot, float32) and their majority symbol."""
    rows: list[npt.NDArray[np.int64]] = []
    while sum(len(r) for r in rows) < n:  # keep only sequences with a unique majority
        sym = rng.integers(0, K, size=(2 * n, T))
        counts = np.sort((sym[:, :, None] == np.arange(K)).sum(axis=1), axis=1)
        rows.append(sym[counts[:, -1] > counts[:, -2]])
    sym = np.concatenate(rows)[:n]
    y = (sym[:, :, None] == np.arange(K)).sum(axis=1).argmax(axis=1)
    return np.eye(K, dtype=np.float32)[sym.T], y.astype(np.int64)


class Adam:
    """Adam over a list of arrays, updating them in place."""

    def __init__(self, params: list[F32], lr: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, betas[0], betas[1], eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[F32]) -> None:
        """Apply one update given the gradients, in the order of ``params``."""
        self.t += 1
        c1, c2 = 1.0 - self.b1 ** self.t, 1.0 - self.b2 ** self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= self.b1
            m += (1.0 - self.b1) * g
            v *= self.b2
            v += (1.0 - self.b2) * g * g
            p -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)


def _forward(lstm: LSTM, w: F32, b: F32, x: F32) -> tuple[F32, F32, LayerTape]:
    """Logits ``[B, K]``, the last hidden state ``[B, H]`` and the LSTM's tape."""
    _, (h_n, _), tape = lstm.forward_train(x)
    h = h_n[0]
    return h @ w.T + b, h, tape


def _loss_and_grad(logits: F32, y: npt.NDArray[np.int64]) -> tuple[float, float, F32]:
    """Mean softmax cross-entropy, accuracy, and d(loss)/d(logits)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = float(-np.log(p[rows, y] + 1e-12).mean())
    acc = float((logits.argmax(axis=1) == y).mean())
    p[rows, y] -= 1.0
    return loss, acc, (p / len(y)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    """Train the demo model and report the loss and the held-out accuracy; returns 0."""
    ap = argparse.ArgumentParser(prog="lstmx demo", description="Train a small LSTM classifier "
                                 "with lstmx's own forward and backward; report its accuracy.")
    ap.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--threads", type=int, default=get_num_threads(),
                    help="lstmx threads (default: %(default)s, lstmx's current setting)")
    ap.add_argument("--quiet", action="store_true", help="print only the final accuracy")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        ap.error("--steps and --threads must be >= 1")
    before = get_num_threads()
    set_num_threads(args.threads)
    try:
        return _train(args.steps, args.seed, args.quiet)
    finally:
        set_num_threads(before)


def _train(steps: int, seed: int, quiet: bool) -> int:
    """The training loop behind :func:`main`."""
    say = (lambda *_: None) if quiet else print
    rng = np.random.default_rng(seed)
    lstm = LSTM(K, H, seed=seed)
    k = 1.0 / np.sqrt(H)
    w = rng.uniform(-k, k, (K, H)).astype(np.float32)  # head, initialised like nn.Linear
    b = np.zeros(K, dtype=np.float32)
    names = list(lstm.named_parameters())
    opt = Adam([*lstm.named_parameters().values(), w, b], lr=1e-2)
    say(f"lstmx demo: majority symbol of {T} one-hot symbols from {K}; LSTM({K}, {H}) + linear "
        f"head, batch {BATCH}, {steps} steps, {get_num_threads()} thread(s)")

    bar = Progress(steps, enabled=not quiet)  # a line every tenth of the run (off a terminal)
    run_loss, run_acc, n = 0.0, 0.0, 0
    for step in range(1, steps + 1):
        x, y = make_batch(rng, BATCH)
        logits, h, tape = _forward(lstm, w, b, x)
        loss, acc, dlogits = _loss_and_grad(logits, y)
        dh = (dlogits @ w)[None]  # [1, B, H]
        _, _, g = lstm.backward(tape, None, dh_n=dh)
        grads = [g[nm] for nm in names] + [dlogits.T @ h, dlogits.sum(axis=0)]
        total = float(np.sqrt(sum(float((gi * gi).sum()) for gi in grads)))
        if total > 1.0:  # clip the global gradient norm
            grads = [gi / np.float32(total) for gi in grads]
        opt.step(grads)
        run_loss, run_acc, n = run_loss + loss, run_acc + acc, n + 1
        bar.update(step, f"loss {run_loss / n:.4f}  acc {run_acc / n:.2f}")
        if step % bar.every == 0:  # the running means restart every tenth of the run
            run_loss, run_acc, n = 0.0, 0.0, 0

    x, y = make_batch(np.random.default_rng(seed + 1_000_003), 2000)
    _, (h_n, _) = lstm(x)
    test_acc = float(((h_n[0] @ w.T + b).argmax(axis=1) == y).mean())
    print(f"final held-out accuracy: {test_acc:.3f} (chance {1 / K:.2f}, n = {len(y)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
