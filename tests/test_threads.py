"""Concurrency: Python threads sharing lstmx, the GIL released during compute, thread counts
changed between calls."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from conftest import RECORD, make_case

import lstmx

N_THREADS = 8


@pytest.fixture
def threads_setting() -> Iterator[None]:
    """Restores lstmx's thread count after the test."""
    old = lstmx.get_num_threads()
    yield
    lstmx.set_num_threads(old)


def run_at_once(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Runs each job on its own Python thread, all released together; returns their results
    (re-raising the first exception)."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            barrier.wait()
            results[k] = jobs[k]()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _work(model: lstmx.LSTM, seed: int) -> Callable[[], list[np.ndarray]]:
    """Inference, training forward and backward on ``model``, inputs made from ``seed``."""
    c = make_case(12, 4, 16, 80, np.float32, seed=seed)  # H = 80: two items of hidden units

    def job() -> list[np.ndarray]:
        out = []
        for _ in range(3):
            y, (hn, cn) = model(c["x"], (c["h0"][None], c["c0"][None]))
            yt, (ht, ct), tape = model.forward_train(c["x"])
            dx, (dh0, dc0), grads = model.backward(tape, np.ones_like(yt), ht, ct)
            weights = (model.weight_ih_l0, model.weight_hh_l0, model.bias_ih_l0, model.bias_hh_l0)
            h1, c1 = lstmx.lstm_cell(c["x"][0], *weights, c["h0"], c["c0"])
            out += [y, hn, cn, yt, ht, ct, dx, dh0, dc0, *grads.values(), h1, c1]
        return out
    return job


def test_threads_on_shared_and_separate_models_match_serial_calls() -> None:
    """8 Python threads at once, half on one shared model and half on models of their own:
    every result is bitwise the result of the same call made alone."""
    shared = lstmx.LSTM(16, 80, seed=0)
    own = [lstmx.LSTM(16, 80, seed=k) for k in range(1, N_THREADS // 2 + 1)]
    jobs = [_work(shared, seed=k) for k in range(N_THREADS // 2)] + \
        [_work(m, seed=10 + k) for k, m in enumerate(own)]
    serial = [job() for job in jobs]
    for _ in range(3):
        for got, expected in zip(run_at_once(jobs), serial):
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)
    RECORD.set("Python threads at once (bitwise = serial)", N_THREADS)


def test_thread_count_changed_between_calls(threads_setting: None) -> None:
    """set_num_threads while other threads compute: every result is still bitwise the same."""
    m = lstmx.LSTM(16, 80, seed=0)
    jobs = [_work(m, seed=k) for k in range(3)]
    expected = [job() for job in jobs]
    done: list[int] = []

    def switch() -> int:
        n = 0
        while len(done) < len(jobs) or n < 3:
            lstmx.set_num_threads(1 + n % 3)
            n += 1
            time.sleep(0.0005)
        return n

    def work(job: Callable[[], list[np.ndarray]]) -> Callable[[], list[list[np.ndarray]]]:
        def run() -> list[list[np.ndarray]]:
            try:
                return [job() for _ in range(4)]
            finally:
                done.append(1)
        return run

    *results, switches = run_at_once([work(j) for j in jobs] + [switch])
    assert switches >= 3
    for runs, exp in zip(results, expected):
        for got in runs:
            for a, b in zip(got, exp):
                np.testing.assert_array_equal(a, b)


def _long_call() -> Callable[[], object]:
    """A 1-thread kernel call of some tens of milliseconds."""
    c = make_case(600, 16, 64, 128, np.float32, seed=1)
    return lambda: lstmx.lstm(**c)


def test_gil_is_released_during_compute(threads_setting: None) -> None:
    """A pure-Python thread keeps running while another thread is inside a kernel call. Were
    the GIL held, it could run only just before and after the call: one gap as long as the
    call would separate its time stamps."""
    lstmx.set_num_threads(1)
    call = _long_call()
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        for _ in range(3):  # the machine is shared: a few tries
            stamps: list[float] = []
            stop = threading.Event()

            def spin() -> None:
                while not stop.is_set():
                    stamps.append(time.perf_counter())

            spinner = threading.Thread(target=spin)
            spinner.start()
            time.sleep(0.01)
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
            stop.set()
            spinner.join()
            gap = float(np.diff([t0, *(s for s in stamps if t0 < s < t1), t1]).max())
            if gap < 0.3 * (t1 - t0):
                break
    finally:
        sys.setswitchinterval(old)
    assert gap < 0.3 * (t1 - t0), f"the Python thread stood still {gap:.3f} s of {t1 - t0:.3f}"


def _overlap(call: Callable[[], object]) -> float:
    """Wall time of ``call`` on two threads at once over the sum of their CPU times: 0.5 when
    they run side by side, 1 when one waits for the other."""
    def timed() -> float:
        t0 = time.thread_time()
        call()
        return time.thread_time() - t0

    t0 = time.perf_counter()
    cpu = run_at_once([timed, timed])
    return (time.perf_counter() - t0) / sum(cpu)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_two_single_thread_calls_overlap_in_time(threads_setting: None) -> None:
    """Two Python threads, each in a 1-thread kernel call, run at the same time: the wall time
    of the pair is well under the sum of their CPU times. The machine may be shared: a control
    that surely runs in parallel (hashing releases the GIL) tells whether two cores were free;
    a few tries are allowed."""
    lstmx.set_num_threads(1)
    calls = [_long_call()] * 3
    data = bytes(40 << 20)
    control = (lambda: hashlib.sha256(data).digest())
    calls[0]()  # warm up
    tries = []
    for _ in range(10):
        tries.append((_overlap(lambda: [c() for c in calls]), _overlap(control)))
        if tries[-1][0] < 0.8:
            break
    RECORD.set("two 1-thread calls: wall / (sum of CPU), control", f"{tries[-1][0]:.2f}, "
               f"{tries[-1][1]:.2f}")
    if tries[-1][0] >= 0.8 and sum(c < 0.8 for _, c in tries) < 3:
        pytest.skip(f"two cores were seldom free at once: (lstmx, control) = {tries}")
    assert tries[-1][0] < 0.8, f"no overlap in {len(tries)} tries: (lstmx, control) = {tries}"


_FORK_SCRIPT = """
import hashlib, os, sys, threading, time
import numpy as np
import lstmx

lstmx.set_num_threads(2)
m = lstmx.LSTM(16, 80, seed=0)
frozen = m.freeze()
x = np.random.default_rng(3).standard_normal((12, 4, 16)).astype(np.float32)


def results():
    y, (hn, cn) = m(x)
    ys, state = frozen.step(x[0])
    return b"".join(a.tobytes() for a in (y, hn, cn, ys, *state))


expected = hashlib.sha256(results() * 2).digest()
stop = threading.Event()
busy = threading.Thread(target=lambda: [m(x) for _ in iter(stop.is_set, True)], daemon=True)
# GCC 12's libasan does not intercept fork: a child forked while another thread holds its
# allocator's lock would hang in malloc. Under it, only the fork after calls.
asan = "libasan" in os.environ.get("LD_PRELOAD", "")
for during in (False,) if asan else (False, True):
    if during:
        busy.start()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its digest to the pipe, then out at once
        try:
            os.close(r)
            os.write(w, hashlib.sha256(results() + results()).digest())
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, 9)
        sys.exit(f"the child forked {'during' if during else 'after'} 2-thread calls hung")
    if os.read(r, 64) != expected:
        sys.exit(f"the child forked {'during' if during else 'after'} 2-thread calls differs")
stop.set()
if busy.is_alive():
    busy.join()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_computes_with_a_team() -> None:
    """lstmx's worker threads stay in the parent: a child forked after 2-thread calls (and one
    forked while another thread computes; not under AddressSanitizer) gets new ones, and its
    results are bitwise the parent's. Run in a fresh interpreter: one without the threads of
    jax or torch, which forking would endanger. A child that hangs fails the test."""
    r = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
