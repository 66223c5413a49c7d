"""A character-level language model trained from scratch on lstmx's NumPy API.

    python examples/char_lm.py            # about 15 s on 2 cores; --quick: a few seconds

The corpus is generated here from a small grammar (no downloads): sentences about cats, kings
and rivers, about 100 KB. The model is one-hot characters -> ``lstmx.LSTM`` -> a linear layer
-> softmax cross-entropy; the output layer, the loss and its gradient are NumPy, written below,
and so is the optimiser, a small Adam (``adam``). It prints a progress bar, the validation loss
in bits per character against a unigram model (character frequencies alone), text sampled
from the model, and writes ``char_lm_loss.png`` (``--out DIR``). Exits 1 if the model does
not beat the unigram baseline.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # set before NumPy loads: see --threads
import numpy as np
import numpy.typing as npt

import lstmx

from _common import Progress, add_common_args, clip_grad_norm, save_plot

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
LN2 = float(np.log(2.0))

# ---- the corpus: a small grammar -------------------------------------------------------------

NOUNS = ["cat", "dog", "king", "queen", "farmer", "bird", "child", "sailor", "horse", "baker"]
ADJECTIVES = ["old", "small", "quiet", "clever", "hungry", "brave", "grey", "little"]
VERBS = ["sees", "follows", "likes", "calls", "watches", "finds", "helps", "feeds"]
PLACES = ["in the garden", "by the river", "at the market", "near the old mill",
          "under the bridge", "on the hill"]
TIMES = ["every morning", "at night", "in the spring", "after the rain", "once a week"]


def sentence(rng: np.random.Generator) -> str:
    """One sentence of the grammar, capitalised, ending with a full stop."""
    def pick(words: list[str]) -> str:
        return words[rng.integers(len(words))]

    def phrase() -> str:  # a noun phrase
        det = pick(["the", "the", "a", "my", "her", "his"])
        return f"{det} {pick(ADJECTIVES)} {pick(NOUNS)}" if rng.random() < 0.4 else \
            f"{det} {pick(NOUNS)}"

    s = f"{phrase()} {pick(VERBS)} {phrase()}"
    r = rng.random()
    if r < 0.3:
        s += f" {pick(PLACES)}"
    elif r < 0.5:
        s += f" {pick(TIMES)}"
    elif r < 0.65:
        s = f"{pick(TIMES)}, {s}"
    elif r < 0.8:
        s += f" and {pick(VERBS)} {phrase()}"
    return s[0].upper() + s[1:] + "."


def make_corpus(n_chars: int, seed: int) -> str:
    """Paragraphs of 2 to 5 sentences, ``n_chars`` characters or a little more."""
    rng = np.random.default_rng(seed)
    paragraphs: list[str] = []
    size = 0
    while size < n_chars:
        p = " ".join(sentence(rng) for _ in range(rng.integers(2, 6)))
        paragraphs.append(p)
        size += len(p) + 1
    return "\n".join(paragraphs) + "\n"


# ---- the optimiser: a small Adam --------------------------------------------------------------

def adam(params: list[F32], lr: float, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8) -> Callable[[list[F32]], None]:
    """A small Adam: returns ``step(grads)``, which updates ``params`` in place."""
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    t = 0

    def step(grads: list[F32]) -> None:
        nonlocal t
        t += 1
        for p, g, mp, vp in zip(params, grads, m, v):
            mp += (1 - b1) * (g - mp)  # running means of g and g^2
            vp += (1 - b2) * (g * g - vp)
            p -= lr * (mp / (1 - b1 ** t)) / (np.sqrt(vp / (1 - b2 ** t)) + eps)

    return step


# ---- the model: lstmx.LSTM + a NumPy output layer --------------------------------------------


class CharLM:
    """One-hot ``[T, B, V]`` -> ``lstmx.LSTM(V, H)`` -> logits ``[T, B, V]``."""

    def __init__(self, vocab: int, hidden: int, seed: int) -> None:
        self.V = vocab
        self.lstm = lstmx.LSTM(vocab, hidden, seed=seed)  # float32
        k = 1.0 / np.sqrt(hidden)
        rng = np.random.default_rng(seed + 1)
        self.w = rng.uniform(-k, k, (vocab, hidden)).astype(np.float32)  # like nn.Linear
        self.b = np.zeros(vocab, np.float32)

    def params(self) -> list[F32]:
        """Every parameter, the LSTM's first (the order of :meth:`grads`)."""
        return [*self.lstm.named_parameters().values(), self.w, self.b]

    def one_hot(self, ids: I64) -> F32:
        """``ids [T, B]`` -> ``[T, B, V]`` float32."""
        return np.eye(self.V, dtype=np.float32)[ids]

    def logits(self, y: F32) -> F32:
        """LSTM output ``[T, B, H]`` -> logits ``[T, B, V]``."""
        return y @ self.w.T + self.b

    def loss_and_grads(self, ids: I64) -> tuple[float, list[F32]]:
        """Mean cross-entropy (nats) of predicting ``ids[1:]`` from ``ids[:-1]`` (``[T+1, B]``)
        and the gradients of every parameter."""
        y, _, tape = self.lstm.forward_train(self.one_hot(ids[:-1]))  # y [T, B, H]
        logp = log_softmax(self.logits(y))  # [T, B, V]
        target = ids[1:]
        n = target.size
        loss = -float(np.take_along_axis(logp, target[..., None], axis=-1).sum()) / n
        dlogits = np.exp(logp)  # softmax - one_hot(target), over n
        np.put_along_axis(dlogits, target[..., None],
                          np.take_along_axis(dlogits, target[..., None], axis=-1) - 1, axis=-1)
        dlogits /= n
        _, _, g = self.lstm.backward(tape, dlogits @ self.w)  # dy [T, B, H]
        flat_d, flat_y = dlogits.reshape(-1, self.V), y.reshape(n, -1)
        return loss, [*g.values(), flat_d.T @ flat_y, flat_d.sum(axis=0)]

    def bits_per_char(self, ids: I64) -> float:
        """Mean bits per character of predicting ``ids[1:]`` (``[T+1, B]``), inference."""
        y, _ = self.lstm(self.one_hot(ids[:-1]))
        logp = log_softmax(self.logits(y))
        return -float(np.take_along_axis(logp, ids[1:, :, None], axis=-1).mean()) / LN2

    def sample(self, prompt: I64, n: int, rng: np.random.Generator,
               temperature: float) -> list[int]:
        """``n`` character ids drawn one at a time after ``prompt``, with lstmx's ``step``."""
        state = None
        for i in prompt[:-1]:
            _, state = self.lstm.step(self.one_hot(np.array([i])), state)
        out, last = [], int(prompt[-1])
        for _ in range(n):
            y, state = self.lstm.step(self.one_hot(np.array([last])), state)  # y [1, H]
            p = np.exp(log_softmax(self.logits(y)[0].astype(np.float64) / temperature))
            last = int(rng.choice(self.V, p=p / p.sum()))
            out.append(last)
        return out


def log_softmax(z: F32) -> F32:
    """``log(softmax(z))`` over the last axis, stably."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def unigram_bits(train: I64, val: I64, vocab: int) -> float:
    """Bits per character of ``val`` under ``train``'s character frequencies (add-one)."""
    p = (np.bincount(train, minlength=vocab) + 1.0) / (len(train) + vocab)
    return -float(np.log2(p[val]).mean())


def streams(ids: I64, n: int) -> I64:
    """``ids`` cut into ``n`` equal contiguous streams, ``[len // n, n]``."""
    T = len(ids) // n
    return ids[:T * n].reshape(n, T).T.copy()


def main(argv: list[str] | None = None) -> int:
    """Train, report and plot; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=800, help="training steps")
    ap.add_argument("--hidden", type=int, default=128, help="LSTM hidden units")
    ap.add_argument("--batch", type=int, default=32, help="sequences per step")
    ap.add_argument("--seq", type=int, default=64, help="characters per training sequence")
    ap.add_argument("--chars", type=int, default=100_000, help="corpus size (10%% validation)")
    add_common_args(ap, "char_lm_loss.png")
    ap.add_argument("--quick", action="store_true",
                    help="a few seconds: 150 steps, 64 hidden units, 20 KB of text")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.hidden, args.chars = 150, 64, 20_000
    if min(args.steps, args.hidden, args.batch, args.seq, args.chars, args.threads) < 1:
        ap.error("--steps, --hidden, --batch, --seq, --chars and --threads must be positive")
    lstmx.set_num_threads(args.threads)

    text = make_corpus(args.chars, args.seed)
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.int64)
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split:]
    val_streams = streams(val, 8)  # [T, 8]: whole paragraphs of context
    V = len(chars)
    print(f"corpus: {len(text)} characters, {V} distinct; {len(train)} train, {len(val)} val")
    print("  " + text[:150].replace("\n", " / ") + " ...")

    rng = np.random.default_rng(args.seed)
    model = CharLM(V, args.hidden, args.seed)
    opt = adam(model.params(), lr=args.lr)
    print(f"model: one-hot({V}) -> lstmx.LSTM({V}, {args.hidden}) -> linear({args.hidden}, "
          f"{V}); batch {args.batch} x {args.seq} chars, {args.steps} steps, "
          f"{lstmx.get_num_threads()} thread(s)")

    baseline = unigram_bits(train, val, V)
    curve: list[float] = []
    val_at: list[tuple[int, float]] = []
    check_every = max(1, args.steps // 10)
    bar = Progress(args.steps)
    for step in range(1, args.steps + 1):
        starts = rng.integers(0, len(train) - args.seq - 1, args.batch)
        batch = train[starts[None, :] + np.arange(args.seq + 1)[:, None]]  # [T+1, B]
        loss, grads = model.loss_and_grads(batch)
        opt(clip_grad_norm(grads))
        curve.append(loss / LN2)
        if step % check_every == 0 or step == args.steps:
            val_at.append((step, model.bits_per_char(val_streams)))
        bar.update(step, f"train {np.mean(curve[-50:]):.3f} bpc  val "
                         f"{val_at[-1][1] if val_at else float('nan'):.3f} bpc")

    bpc = val_at[-1][1]
    print(f"validation: {bpc:.3f} bits/char (LSTM) vs {baseline:.3f} bits/char (unigram "
          f"baseline): {bpc / baseline:.0%} of the baseline")
    prompt = np.array([chars.index(c) for c in "The "], dtype=np.int64)
    sampled = model.sample(prompt, 300, np.random.default_rng(args.seed + 1), temperature=0.7)
    print("sample (temperature 0.7):\n  The " + "".join(chars[i] for i in sampled)
          .replace("\n", "\n  "))

    smooth = np.convolve(curve, np.ones(20) / 20, mode="valid") if len(curve) >= 20 else curve
    path = save_plot(
        os.path.join(args.out, "char_lm_loss.png"), "Character-level LSTM on lstmx", "step",
        "bits per character",
        [(range(len(curve) - len(smooth) + 1, len(curve) + 1), smooth,
          "train (mean of 20 steps)", {}),
         ([s for s, _ in val_at], [v for _, v in val_at], "validation", {"marker": "o"}),
         ([1, args.steps], [baseline, baseline], "unigram baseline", {"linestyle": "--"})])
    if path:
        print(f"wrote {path}")
    if not bpc < baseline:
        print("FAILED: the model does not beat the unigram baseline")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
