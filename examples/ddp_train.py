"""Data-parallel training with ``torch.distributed`` on a model built on ``lstmx.torch.LSTM``.

Spawns ``--world-size`` processes on this machine (``torch.multiprocessing.spawn``), joins them
into a gloo process group (meeting through a file store in a temporary directory), and trains
embedding -> lstmx LSTM ->
linear wrapped in ``DistributedDataParallel``: each process runs lstmx's forward and backward
on its own shard of every epoch (``DistributedSampler``), and DDP averages the gradients over
the processes before each Adam step, so every process keeps the same weights. Rank 0 prints
the loss of each epoch, averaged over all processes.

The task, generated in code: counting mod ``V`` with a step the model must infer, sequences
``x_t = (a + s t) mod V`` with a random start ``a`` and step ``s`` in 1..3; the model predicts
each next symbol. Only the second symbol cannot be known (one of 3), so the loss can fall to
``ln(3) / T``, about 0.07.

Run it with ``python examples/ddp_train.py`` (``--help`` for the options), with lstmx and torch
installed (from a source tree: ``PYTHONPATH=python python examples/ddp_train.py``). Each
process uses one thread (torch's and lstmx's): set ``--world-size`` to at most the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import tempfile
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import lstmx
import lstmx.torch

V, T = 12, 16  # symbols, sequence length
MAX_STEP = 3


class Model(nn.Module):
    """Next-symbol prediction: embedding -> ``lstmx.torch.LSTM`` -> linear."""

    def __init__(self, vocab: int = V, hidden: int = 32, layers: int = 1) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.rnn = lstmx.torch.LSTM(16, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``[B, T, V]`` of each next symbol, given ``tokens [B, T]``."""
        y, _ = self.rnn(self.emb(tokens))  # [B, T, H]
        return self.out(y)


def make_data(n: int, seed: int = 0) -> Tensor:
    """``n`` sequences ``[n, T + 1]`` (int64): counting mod ``V`` by a random step."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, V, (n, 1), generator=g)
    step = torch.randint(1, MAX_STEP + 1, (n, 1), generator=g)
    return (start + step * torch.arange(T + 1)) % V


def loss_fn(model: nn.Module, seqs: Tensor) -> Tensor:
    """Mean cross-entropy of predicting ``seqs[:, 1:]`` from ``seqs[:, :-1]``."""
    logits = model(seqs[:, :-1])  # [B, T, V]
    return nn.functional.cross_entropy(logits.flatten(0, 1), seqs[:, 1:].flatten())


@contextlib.contextmanager
def process_group(rank: int, world_size: int, store_path: str,
                  timeout_s: float = 60.0) -> Iterator[None]:
    """One thread per process (torch's and lstmx's), in the gloo process group while inside.

    The ranks meet through a ``FileStore`` at ``store_path`` (a file that does not exist yet,
    on a file system they share): unlike the TCP store of ``init_method="tcp://..."``, it runs
    no server thread in rank 0. With the TCP store rank 0 aborted at exit now and then, after
    training ("terminate called without an active exception"; 3 times in this project's test
    suite runs over two days, never when the example ran alone).

    On leaving normally it waits for every rank before destroying the group: a rank that tears
    gloo down while another is still finishing an all-reduce can make that one abort. Build
    DistributedDataParallel models inside a function called within, so that they (and their
    reference to the group) are gone before it is destroyed; they hold reference cycles, so
    they are collected (gc) first."""
    torch.set_num_threads(1)
    lstmx.set_num_threads(1)
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield
        gc.collect()  # the DDP models of the body, now, while the group and Python are whole
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train(rank: int, world_size: int, store_path: str, args: argparse.Namespace) -> None:
    """One process (the target of ``mp.spawn``; ``rank`` comes first)."""
    with process_group(rank, world_size, store_path):
        train_loop(rank, world_size, args)


def train_loop(rank: int, world_size: int, args: argparse.Namespace) -> None:
    """One process's training loop, in the process group."""
    torch.manual_seed(args.seed)  # the same initial weights (DDP also broadcasts rank 0's)
    model = DistributedDataParallel(Model(hidden=args.hidden))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = TensorDataset(make_data(args.samples, seed=args.seed))
    sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    if rank == 0:
        print(f"{world_size} processes (gloo), {len(loader)} steps per epoch of "
              f"{args.batch_size} sequences each", flush=True)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a new shuffle, the same on every rank
        total = torch.zeros(2, dtype=torch.float64)  # [sum of losses, steps]
        for (seqs,) in loader:
            opt.zero_grad()
            loss = loss_fn(model, seqs)
            loss.backward()  # lstmx's backward; DDP all-reduces (averages) the gradients
            opt.step()
            total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
        dist.all_reduce(total)  # over every rank
        if rank == 0:
            print(f"epoch {epoch + 1:3d}  loss {total[0].item() / total[1].item():.4f}  "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Parse the options and spawn the processes."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--world-size", type=int, default=2, help="processes (one thread each)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--samples", type=int, default=256, help="training sequences in all")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per process and step")
    p.add_argument("--hidden", type=int, default=32, help="LSTM hidden units")
    p.add_argument("--lr", type=float, default=0.02, help="Adam's learning rate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.world_size < 1:
        p.error("--world-size: expected at least 1")
    if args.samples < args.world_size * args.batch_size:
        p.error("--samples: expected at least world-size * batch-size")
    with tempfile.TemporaryDirectory(prefix="lstmx-ddp-") as tmp:  # the ranks' meeting point
        mp.spawn(train, args=(args.world_size, os.path.join(tmp, "store"), args),
                 nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()
