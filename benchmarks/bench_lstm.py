"""Benchmark lstmx's LSTM against torch.nn.LSTM, ONNX Runtime, the NumPy reference and the GEMM
roofline, and check the performance targets.

What it measures, per configuration (input size I, hidden size H, batch B, steps T) and mode:

* ``infer``: one forward pass over the whole sequence (``lstmx.lstm``; ``torch.nn.LSTM`` under
  ``torch.inference_mode()``; an ONNX Runtime session on one ONNX ``LSTM`` node;
  ``lstmx.reference.lstm_forward``);
* ``train``: a training forward pass plus backpropagation through time (``lstmx.lstm_train`` +
  ``lstmx.lstm_backward``; ``torch.nn.LSTM`` + ``y.backward(dy)``; the reference's forward and
  backward). ONNX Runtime is an inference peer only.

All peers run in one process with the same thread count, the same weights and the same input,
and are first checked to compute what lstmx computes. The table gives median milliseconds and
GFLOP/s per peer (forward = ``2*T*B*4H*(I+H)`` FLOPs, training = 3x that), lstmx's speedup over
each peer and over the best one (peer time / lstmx time), and lstmx's GFLOP/s as a percentage
of the machine's rate on one ``[T*B, I+H] x [I+H, 4H]`` GEMM (the roofline). With
``--targets`` (the default for ``--configs all``) it also measures 1 vs 2 threads, float64 against
torch and the peak memory of a training step, and lists the targets met and not met.
torch, onnx + onnxruntime and matplotlib are optional: a missing one is skipped. The
reference is slow and only timed on the smaller configurations.

How to run (after ``pip install ".[bench]"``, and optionally ``pip install torch==2.13.0``)::

    python benchmarks/bench_lstm.py                       # b1-h128, b32-h256, b64-h512 (~1 min)
    python benchmarks/bench_lstm.py --configs all         # the whole grid and the targets
    python benchmarks/bench_lstm.py --quick --configs all # a fast, rough pass (under 2 min)
    python benchmarks/bench_lstm.py --threads 1 --dtype float64 --out results/
    python benchmarks/bench_lstm.py --help                # every option, the grid, the targets

The table goes to stdout, the progress bar to stderr, ``lstmx-bench.json`` and
``lstmx-bench.png`` to ``--out`` (default: the current folder). Timings are only meaningful on
an otherwise idle machine.
"""

from __future__ import annotations

import sys

from lstmx.bench import main

if __name__ == "__main__":
    sys.exit(main())
