"""lstmx.torch.LSTM under torch.distributed: DistributedDataParallel over 2 gloo processes on
localhost gives the single-process full-batch gradients, and examples/ddp_train.py runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import assert_close, require

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_train.py"
WORLD, BATCH, LAYERS = 2, 8, 2
TIMEOUT_S = 120  # for the processes in all; a normal run takes a few seconds


def load_example() -> ModuleType:
    """examples/ddp_train.py as a module (its model, data, loss and process-group setup)."""
    spec = importlib.util.spec_from_file_location("ddp_train", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def full_batch() -> Any:
    """The fixed batch ``[BATCH, T + 1]`` that the ranks split in halves."""
    return load_example().make_data(BATCH, seed=1)


def grad_worker(rank: int, store: str, out: Path) -> None:
    """One rank, in the example's process group."""
    ex = load_example()
    with ex.process_group(rank, WORLD, store, timeout_s=TIMEOUT_S / 2):
        save_grads(ex, rank, out)


def save_grads(ex: ModuleType, rank: int, out: Path) -> None:
    """Its half of the batch through DDP, float64. Saves the gradients of its local loss alone
    (``no_sync``) and after DDP's all-reduce, by parameter name."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    model = ex.Model(layers=LAYERS).double()
    ddp = DistributedDataParallel(model)
    shard = full_batch().chunk(WORLD)[rank]  # [BATCH / WORLD, T + 1]
    grads: dict[str, np.ndarray] = {}
    for kind in ("local", "synced"):
        model.zero_grad(set_to_none=True)
        if kind == "local":
            with ddp.no_sync():
                ex.loss_fn(ddp, shard).backward()
        else:  # the mean loss of each rank: DDP's average is the full batch's mean
            ex.loss_fn(ddp, shard).backward()
        grads.update({f"{kind}/{n}": p.grad.numpy().copy()
                      for n, p in model.named_parameters()})
    np.savez(out / f"rank{rank}.npz", **grads)


def test_ddp_gradients_equal_full_batch_gradients(tmp_path: Path) -> None:
    torch = require("torch")
    import multiprocessing

    ex = load_example()
    ctx = multiprocessing.get_context("spawn")
    store = str(tmp_path / "store")
    procs = [ctx.Process(target=grad_worker, args=(r, store, tmp_path)) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        assert not hung, f"ranks {hung} did not finish within {TIMEOUT_S} s"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    codes = [p.exitcode for p in procs]
    assert codes == [0] * WORLD, f"worker exit codes {codes} (tracebacks above, on stderr)"

    torch.manual_seed(0)
    model = ex.Model(layers=LAYERS).double()
    ex.loss_fn(model, full_batch()).backward()
    expected = {n: p.grad.numpy() for n, p in model.named_parameters()}
    assert {"rnn.weight_ih_l1", "rnn.weight_hh_l1", "rnn.bias_ih_l0"} <= set(expected)
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(WORLD)]
    for name, g in expected.items():
        for r, got in enumerate(ranks):
            assert_close(got[f"synced/{name}"], g, np.float64, f"rank {r}: {name}")
            # the rank's own half alone gives other gradients: the all-reduce did the work
            assert not np.allclose(got[f"local/{name}"], g, rtol=1e-3, atol=0), name
        np.testing.assert_array_equal(ranks[1][f"synced/{name}"], ranks[0][f"synced/{name}"],
                                      err_msg=name)


def test_example_trains() -> None:
    """The example end to end (2 processes, 3 epochs): it learns, and warns of nothing."""
    require("torch")
    r = subprocess.run([sys.executable, str(EXAMPLE), "--epochs", "3"], capture_output=True,
                       text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
    losses = [float(line.split()[3]) for line in r.stdout.splitlines()
              if line.startswith("epoch")]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0], r.stdout
