"""CI's leak pass: call every lstmx kernel, under LeakSanitizer (see .ci/run).

``python .ci/leakcheck.py`` calls every kernel once: each ISA level, float32 and float64, the
fast and the naive cell kernels, inference, training and backward, the cell step and the layer
(frozen too), both layouts, 1 and 2 threads, zero-sized inputs, and calls refused with an
exception.

``python .ci/leakcheck.py --report LOG...`` reads LeakSanitizer's logs of that run and fails if
any leak was allocated by lstmx code (an lstmx frame in its allocation stack). CPython and
NumPy leave a few objects unfreed at exit by design; those leaks have no lstmx frame.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

OURS = re.compile(r"lstmx/_(core|kernels)|lstmx::|cpp/(bindings|dispatch|lstm)\.cpp")


def call_every_kernel() -> int:
    """Returns the number of calls made."""
    import numpy as np

    import lstmx
    from lstmx import _core
    from lstmx import functional as F

    rng = np.random.default_rng(0)
    calls = 0
    for isa in lstmx.config()["isas_available"]:  # type: ignore[union-attr]
        _core.set_isa(isa)
        for threads in (1, 2):
            lstmx.set_num_threads(threads)
            for dt in (np.float32, np.float64):
                # H = 130: three items of 64 hidden units, so both threads work
                for T, B, I, H in ((3, 2, 4, 5), (4, 3, 70, 130), (0, 2, 3, 4), (2, 0, 3, 4)):
                    for bf in (False, True):
                        x = rng.standard_normal((B, T, I) if bf else (T, B, I)).astype(dt)
                        w_ih = (rng.standard_normal((4 * H, I)) * 0.3).astype(dt)
                        w_hh = (rng.standard_normal((4 * H, H)) * 0.3).astype(dt)
                        b, h0, c0 = (rng.standard_normal(s).astype(dt)
                                     for s in ((4 * H,), (B, H), (B, H)))
                        for naive in (False, True):
                            F._forward(x, w_ih, w_hh, b, b, h0, c0, bf, False, naive)
                            y, hn, cn, tape = F._forward(x, w_ih, w_hh, b, None, None, None, bf,
                                                         True, naive)
                            F._backward(tape, np.ones_like(y), hn, cn, naive)
                            F._backward(tape, None, None, None, naive)
                            calls += 4
                    # every variant at once: lengths, reverse, a projection, peepholes, clip,
                    # input_forget, zoneout, recurrent dropout
                    if H > 1:
                        P = H // 2
                        kw = dict(lengths=rng.integers(0, T + 1, B), reverse=True,
                                  w_hr=(rng.standard_normal((P, H)) * 0.3).astype(dt),
                                  peephole=rng.standard_normal((3, H)).astype(dt), clip=2.0,
                                  input_forget=True, zoneout_h=0.2, zoneout_c=0.3)
                        w_hp = (rng.standard_normal((4 * H, P)) * 0.3).astype(dt)
                        hp0 = rng.standard_normal((B, P)).astype(dt)
                        lstmx.lstm(x, w_ih, w_hp, b, None, hp0, c0, batch_first=bf, **kw)
                        y, hn, cn, tape = lstmx.lstm_train(x, w_ih, w_hp, b, None, hp0, c0,
                                                           batch_first=bf, seed=3,
                                                           recurrent_dropout=0.2, **kw)
                        lstmx.lstm_backward(tape, np.ones_like(y), hn, cn)
                        calls += 3
                    h, c, tape = lstmx.lstm_cell_train(rng.standard_normal((B, I)).astype(dt),
                                                       w_ih, w_hh, b, b, h0, c0)
                    lstmx.lstm_cell_backward(tape, np.ones_like(h), c)
                    lstmx.lstm_cell(rng.standard_normal((B, I)).astype(dt), w_ih, w_hh)
                    calls += 3
            m = lstmx.LSTM(5, 7, batch_first=True, seed=1)
            y, (hn, cn), tape = m.forward_train(np.ones((2, 3, 5), np.float32))
            m.backward(tape, np.ones_like(y), hn, cn)
            m(np.ones((3, 5), np.float32))
            for kw in (dict(num_layers=2, proj_size=3, peephole=True, zoneout_h=0.1),
                       dict(layer_norm=True)):
                s = lstmx.LSTM(5, 7, seed=1, **kw)
                s.step(np.ones((3, 5), np.float32), s.step(np.ones((3, 5), np.float32))[1])
                f = s.freeze()  # weights packed once
                f(np.ones((4, 3, 5), np.float32))
                f.step(np.ones((3, 5), np.float32), f.step(np.ones((3, 5), np.float32))[1])
                calls += 5
            calls += 3
    # Refused calls: every check, in Python and in lstmx._core, exits through an exception.
    x = np.ones((3, 2, 4), np.float32)
    w_ih, w_hh = np.ones((20, 4), np.float32), np.ones((20, 5), np.float32)
    refused = [
        lambda: lstmx.lstm(x, w_ih[:, :3], w_hh),
        lambda: lstmx.lstm(x.astype(np.int32), w_ih, w_hh),
        lambda: lstmx.lstm(np.broadcast_to(x[:1], (2**40, 2, 4)), w_ih, w_hh),
        lambda: lstmx.lstm_backward(lstmx.lstm_train(x, w_ih, w_hh)[3], x),
        lambda: _core.forward(x, w_ih, w_hh, None, np.ones((3, 4), np.float32), None, False,
                              True),
        lambda: _core.forward(np.empty((2**29, 2**30, 0), np.float32), w_ih[:, :0], w_hh,
                              None, None, None, False, True),
        lambda: _core.backward(lstmx.lstm_train(x, w_ih, w_hh)[3]._cache, x, None, None),
        lambda: lstmx.lstm(x, w_ih, w_hh, lengths=[3, 4]),
        lambda: _core.forward(x, w_ih, w_hh, None, None, None, False, True,
                              lengths=np.array([3, 4])),
        lambda: _core.forward(x, w_ih, w_hh, None, None, None, False, True, True, clip=1.0),
        lambda: _core.step_plan([(w_ih, w_hh[:, :4], None, None, None, None)]),
        lambda: _core.step_plan([(w_ih, w_hh, None, None, None, None)]).run(
            x[0], np.ones((1, 2, 5), np.float32), np.ones((1, 2, 4), np.float32)),
        lambda: _core.step_plan([(w_ih, w_hh, None, None, None, None,
                                  _core.pack(w_ih[:, :3].copy(), w_hh))]),
        lambda: _core.forward(x[..., :3].copy(), w_ih[:, :3].copy(), w_hh, None, None, None,
                              False, False, packed=_core.pack(w_ih, w_hh)),
        lambda: _core.pack(w_ih, w_hh[:, :4].copy()),
        lambda: _core.set_num_threads(0),
        lambda: _core.set_isa("none"),
        lambda: lstmx.LSTM(2**40, 2**40),
    ]
    for i, f in enumerate(refused):
        try:
            f()
        except (TypeError, ValueError, MemoryError):
            calls += 1
        else:
            raise AssertionError(f"bad call {i} (of refused) was not refused")
    return calls


def report(logs: list[str]) -> int:
    """0 if no leak in ``logs`` has an lstmx frame, else 1 (and prints those leaks)."""
    ours, others = [], 0
    for log in logs:
        text = Path(log).read_text()
        for block in re.findall(r"^(?:Direct|Indirect) leak of .*?(?:\n\n|\Z)", text,
                                re.M | re.S):
            if OURS.search(block):
                ours.append(block)
            else:
                others += 1
    for block in ours:
        print(block)
    print(f"leak pass: {len(ours)} leak(s) allocated by lstmx; {others} leak(s) of CPython and "
          f"NumPy at exit, ignored; {len(logs)} log(s)")
    return 1 if ours else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--report"]:
        sys.exit(report(sys.argv[2:]))
    print(f"leak pass: {call_every_kernel()} calls")
