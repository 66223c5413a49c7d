"""Benchmark lstmx's LSTM against torch.nn.LSTM, the NumPy reference and the GEMM roofline.

What it measures, per configuration (input size I, hidden size H, batch B, steps T) and mode:

* ``infer``: one forward pass over the whole sequence (``lstmx.lstm``; ``torch.nn.LSTM`` under
  ``torch.inference_mode()``; ``lstmx.reference.lstm_forward``);
* ``train``: a training forward pass plus backpropagation through time (``lstmx.lstm_train`` +
  ``lstmx.lstm_backward``; ``torch.nn.LSTM`` + ``y.backward(dy)``; the reference's forward and
  backward).

All peers run in one process with the same thread count, the same weights and the same input.
The table gives median milliseconds and GFLOP/s per peer (forward = ``2*T*B*4H*(I+H)`` FLOPs,
training = 3x that), lstmx's speedup over torch and over the reference (peer time / lstmx time),
and lstmx's GFLOP/s as a percentage of the machine's rate on one ``[T*B, I+H] x [I+H, 4H]``
GEMM (the roofline). torch is optional: without it that peer is skipped and the GEMM is timed
with NumPy. The reference is slow and only timed on the smaller configurations.

How to run (after ``pip install .``, and optionally ``pip install torch==2.13.0``)::

    python benchmarks/bench_lstm.py                       # b1-h128, b32-h256, b64-h512 (~1 min)
    python benchmarks/bench_lstm.py --configs all         # the whole grid
    python benchmarks/bench_lstm.py --quick --configs all # a fast, rough pass
    python benchmarks/bench_lstm.py --threads 1 --dtype float64 --json results.json
    python benchmarks/bench_lstm.py --help                # every option and the grid

The table goes to stdout, progress to stderr. Timings are only meaningful on an otherwise idle
machine.
"""

from __future__ import annotations

import sys

from lstmx.bench import main

if __name__ == "__main__":
    sys.exit(main())
