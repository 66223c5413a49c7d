"""Time-series forecasting with lstmx: an LSTM against a naive and a linear forecast.

    python examples/forecast.py           # about 15 s on 2 cores; --quick: a few seconds

The series is the Mackey-Glass delay equation (a model of blood-cell production and a classic
forecasting benchmark: chaotic, with a nonlinear feedback 10 time units long), sampled once a
time unit, with 2% measurement noise; no downloads. The task: from the readings up to ``t``,
forecast the reading at ``t + horizon`` (default 10). The first 80% of the series trains, the
rest tests. The model is ``lstmx.LSTM`` -> a linear layer, trained on the mean squared error
with NumPy (the head, the loss and its gradient below; the small Adam of ``char_lm.py``). It prints
the test RMSE of the LSTM, of the naive forecast (the last reading) and of a linear
autoregression on the last ``--lags`` readings fitted by least squares, and plots a stretch
of the forecasts to ``forecast.png`` (``--out DIR``). Exits 1 if the LSTM does not beat both.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # set before NumPy loads: see --threads
import numpy as np
import numpy.typing as npt

import lstmx

from char_lm import adam
from _common import Progress, add_common_args, clip_grad_norm, save_plot

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def mackey_glass(n: int, seed: int, tau: float = 17.0, noise: float = 0.02,
                 substeps: int = 10) -> F64:
    """``n`` noisy readings, one per time unit, of ``dx/dt = 0.2 x(t - tau) / (1 + x(t -
    tau)^10) - 0.1 x(t)`` (Euler, ``substeps`` a unit), after a transient of 500 units; the
    noise is Gaussian, ``noise`` times the series' standard deviation."""
    rng = np.random.default_rng(seed)
    h, lag = 1.0 / substeps, int(round(tau * substeps))
    skip = 500 * substeps
    x = np.empty(skip + n * substeps + lag + 1)
    x[:lag + 1] = 1.2 + 0.2 * rng.random()  # the history: a constant, drawn
    for i in range(lag, len(x) - 1):
        xd = x[i - lag]
        x[i + 1] = x[i] + h * (0.2 * xd / (1.0 + xd ** 10) - 0.1 * x[i])
    clean = x[lag + 1 + skip::substeps][:n]
    return clean + noise * clean.std() * rng.standard_normal(n)


def lag_matrix(x: F64, lags: int, horizon: int) -> tuple[F64, F64, npt.NDArray[np.int64]]:
    """Rows ``x[t - lags + 1 .. t]`` with target ``x[t + horizon]``, and each row's ``t``."""
    t = np.arange(lags - 1, len(x) - horizon)
    return x[t[:, None] + np.arange(1 - lags, 1)], x[t + horizon], t


class Forecaster:
    """Readings ``[T, B, 1]`` -> ``lstmx.LSTM(1, H)`` -> linear -> forecasts ``[T, B]``."""

    def __init__(self, hidden: int, seed: int) -> None:
        self.lstm = lstmx.LSTM(1, hidden, seed=seed)  # float32
        k = 1.0 / np.sqrt(hidden)
        self.w = np.random.default_rng(seed + 1).uniform(-k, k, hidden).astype(np.float32)
        self.b = np.zeros(1, np.float32)

    def params(self) -> list[F32]:
        """Every parameter, the LSTM's first (the order of :meth:`loss_and_grads`)."""
        return [*self.lstm.named_parameters().values(), self.w, self.b]

    def predict(self, x: F32) -> F32:
        """Forecasts ``[T, B]`` for readings ``x [T, B]`` (inference)."""
        y, _ = self.lstm(x[..., None])
        return y @ self.w + self.b

    def loss_and_grads(self, x: F32, target: F32, warmup: int) -> tuple[float, list[F32]]:
        """Mean squared error of the forecasts past the first ``warmup`` steps of ``x [T, B]``
        against ``target [T, B]``, and the gradients of every parameter."""
        y, _, tape = self.lstm.forward_train(x[..., None])  # y [T, B, H]
        err = (y @ self.w + self.b - target)[warmup:]  # [T - warmup, B]
        derr = np.zeros(x.shape, np.float32)
        derr[warmup:] = 2.0 * err / err.size
        _, _, g = self.lstm.backward(tape, derr[..., None] * self.w)  # dy [T, B, H]
        return float((err ** 2).mean()), [*g.values(), np.einsum("tb,tbh->h", derr, y),
                                          derr.sum(keepdims=True).reshape(1)]


def windows(x: F64, starts: npt.NDArray[np.int64], length: int) -> F32:
    """``x[s : s + length]`` for each start, as columns ``[length, len(starts)]``."""
    return x[starts[None, :] + np.arange(length)[:, None]].astype(np.float32)


def rmse(a: F64, b: F64) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def main(argv: list[str] | None = None) -> int:
    """Train, report and plot; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000, help="training steps")
    ap.add_argument("--hidden", type=int, default=64, help="LSTM hidden units")
    ap.add_argument("--batch", type=int, default=32, help="windows per step")
    ap.add_argument("--window", type=int, default=100, help="readings per training window")
    ap.add_argument("--warmup", type=int, default=20,
                    help="first steps of a window not scored (the LSTM's state fills up)")
    ap.add_argument("--horizon", type=int, default=10, help="forecast this many steps ahead")
    ap.add_argument("--lags", type=int, default=16, help="readings the linear model sees")
    ap.add_argument("--length", type=int, default=5000, help="readings in the series")
    add_common_args(ap, "forecast.png")
    ap.add_argument("--quick", action="store_true",
                    help="a few seconds: 200 steps, 32 hidden units, 2000 readings")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.hidden, args.length = 200, 32, 2000
    if min(args.steps, args.hidden, args.batch, args.horizon, args.lags, args.threads) < 1 \
            or not 0 <= args.warmup < args.window:
        ap.error("--steps, --hidden, --batch, --horizon, --lags, --threads must be positive "
                 "and 0 <= --warmup < --window")
    if args.length < 5 * (args.window + args.horizon + args.lags):
        ap.error("--length: too short for --window, --horizon and --lags")
    lstmx.set_num_threads(args.threads)

    series = mackey_glass(args.length, args.seed)
    split = int(0.8 * len(series))
    mean, std = series[:split].mean(), series[:split].std()
    z = (series - mean) / std  # the model sees standardised readings
    h, W, warm = args.horizon, args.window, args.warmup
    print(f"series: Mackey-Glass (tau 17), {len(series)} noisy readings, {split} train, "
          f"{len(series) - split} test; forecast {h} steps ahead")

    # ---- the baselines, scored on every test reading t with t + h in the series ----
    X, y, t_ar = lag_matrix(series, args.lags, h)
    train_rows, test_rows = t_ar + h < split, t_ar >= split
    A = np.c_[X, np.ones(len(X))]
    coef = np.linalg.lstsq(A[train_rows], y[train_rows], rcond=None)[0]
    t_test = t_ar[test_rows]  # [N]: the forecasts' origins
    truth = series[t_test + h]
    forecasts = {"naive (last value)": series[t_test],
                 f"linear AR({args.lags})": A[test_rows] @ coef}

    # ---- the LSTM ----
    rng = np.random.default_rng(args.seed)
    model = Forecaster(args.hidden, args.seed)
    opt = adam(model.params(), lr=args.lr)
    print(f"model: lstmx.LSTM(1, {args.hidden}) -> linear({args.hidden}, 1); batch "
          f"{args.batch} x {W} readings, {args.steps} steps, {lstmx.get_num_threads()} "
          f"thread(s)")
    curve: list[float] = []
    bar = Progress(args.steps)
    for step in range(1, args.steps + 1):
        starts = rng.integers(0, split - W - h + 1, args.batch)  # targets inside train
        loss, grads = model.loss_and_grads(windows(z, starts, W), windows(z, starts + h, W),
                                           warm)
        opt(clip_grad_norm(grads))
        curve.append(loss)
        bar.update(step, f"train MSE {np.mean(curve[-50:]):.4f} (standardised)")

    # the test forecasts: windows of W - warm scored readings, each after `warm` readings
    first = t_test[0] - warm
    starts = np.arange(first, t_test[-1] + 1, W - warm)
    starts = np.minimum(starts, len(series) - W)  # the last window ends at the series' end
    pred = model.predict(windows(z, starts, W))[warm:] * std + mean  # [W - warm, n]
    t_pred = (starts + warm)[None, :] + np.arange(W - warm)[:, None]
    lstm_at = np.empty(len(series))
    lstm_at[t_pred.T.ravel()] = pred.T.ravel()  # overlapping windows: the later one wins
    forecasts = {f"lstmx LSTM({args.hidden})": lstm_at[t_test], **forecasts}

    scores = {name: rmse(f, truth) for name, f in forecasts.items()}
    print(f"test RMSE, {h} steps ahead, {len(truth)} forecasts (series std {series.std():.3f}):")
    for name, s in scores.items():
        print(f"  {name:<20} {s:.4f}")
    lstm_rmse, *baselines = scores.values()
    print(f"LSTM vs best baseline: {lstm_rmse / min(baselines):.2f}x its error")

    show = slice(0, min(300, len(truth)))
    path = save_plot(
        os.path.join(args.out, "forecast.png"),
        f"Mackey-Glass, {h} steps ahead: test forecasts", "time step", "reading",
        [(t_test[show] + h, truth[show], "reading", {"color": "black", "linewidth": 1})]
        + [(t_test[show] + h, f[show], f"{name} (RMSE {scores[name]:.3f})", {"alpha": 0.8})
           for name, f in forecasts.items()])
    if path:
        print(f"wrote {path}")
    if not lstm_rmse < min(baselines):
        print("FAILED: the LSTM does not beat both baselines")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
