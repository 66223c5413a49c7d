"""Agreement with torch.nn.LSTM: forward, autograd gradients, packed sequences and state_dict
exchange, for stacks of layers in both directions."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from conftest import assert_close, require

import lstmx


@pytest.fixture(scope="module")
def torch() -> Any:
    t = require("torch")
    t.manual_seed(0)
    return t


def compare(torch: Any, ref: Any, m: lstmx.LSTM, T: int, B: int, with_state: bool,
            lengths: list[int] | None = None) -> None:
    """Outputs, final state and every gradient (autograd's) of ``ref`` and ``m`` (loaded with
    ``ref``'s parameters) on the same random input; ``lengths``: torch runs a PackedSequence."""
    ref.zero_grad()
    m.load_state_dict(ref.state_dict())  # torch tensors load directly
    assert list(m.named_parameters()) == list(ref.state_dict())  # PyTorch's order
    tdt = next(ref.parameters()).dtype
    LD = m.num_layers * (2 if m.bidirectional else 1)
    x = torch.randn(*((B, T, m.input_size) if m.batch_first else (T, B, m.input_size)),
                    dtype=tdt, requires_grad=True)
    hx = tuple(torch.randn(LD, B, n, dtype=tdt, requires_grad=True)
               for n in (m.proj_size or m.hidden_size, m.hidden_size)) if with_state else None
    if lengths is None:
        yt, (ht, ct) = ref(x, hx)
    else:
        nn = torch.nn.utils.rnn
        packed = nn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=m.batch_first,
                                         enforce_sorted=False)
        out, (ht, ct) = ref(packed, hx)
        yt, _ = nn.pad_packed_sequence(out, batch_first=m.batch_first, total_length=T)
    dy, dh, dc = torch.randn_like(yt), torch.randn_like(ht), torch.randn_like(ct)
    torch.autograd.backward([yt, ht, ct], [dy, dh, dc])

    state = None if hx is None else tuple(s.detach().numpy() for s in hx)
    y, (hn, cn), tape = m.forward_train(x.detach().numpy(), state, lengths)
    dx, (dh0, dc0), grads = m.backward(tape, dy.numpy(), dh.numpy(), dc.numpy())
    pairs = dict(y=(y, yt), h_n=(hn, ht), c_n=(cn, ct), dx=(dx, x.grad))
    if hx is not None:
        pairs.update(dh0=(dh0, hx[0].grad), dc0=(dc0, hx[1].grad))
    named = dict(ref.named_parameters())
    assert list(grads) == list(named)
    pairs.update({k: (g, named[k].grad) for k, g in grads.items()})
    for k, (a, b) in pairs.items():
        assert_close(a, b.detach().numpy(), m.dtype, k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("T,B,I,H,bias,batch_first", [
    (1, 1, 3, 4, True, False),
    (7, 3, 5, 13, True, True),
    (12, 4, 16, 16, False, False),
    (5, 2, 9, 33, True, False),
])
def test_matches_torch_forward_and_gradients(torch: Any, dtype: str, T: int, B: int, I: int,
                                             H: int, bias: bool, batch_first: bool) -> None:
    ref = torch.nn.LSTM(I, H, bias=bias, batch_first=batch_first).to(getattr(torch, dtype))
    compare(torch, ref, lstmx.LSTM(I, H, bias=bias, batch_first=batch_first, dtype=dtype),
            T, B, with_state=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias,with_state",
                         list(itertools.product([1, 2, 3], *[[False, True]] * 4)))
def test_stacks_match_torch(torch: Any, dtype: str, num_layers: int, bidirectional: bool,
                            batch_first: bool, bias: bool, with_state: bool) -> None:
    kw = dict(num_layers=num_layers, bias=bias, batch_first=batch_first,
              bidirectional=bidirectional)
    ref = torch.nn.LSTM(4, 5, **kw).to(getattr(torch, dtype))
    compare(torch, ref, lstmx.LSTM(4, 5, **kw, dtype=dtype), T=4, B=3, with_state=with_state)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first",
                         [(1, False, False), (2, True, False), (3, True, True), (2, False, True)])
def test_lengths_match_packed_sequences(torch: Any, dtype: str, num_layers: int,
                                        bidirectional: bool, batch_first: bool) -> None:
    """Unsorted lengths against pack_padded_sequence(enforce_sorted=False); torch refuses
    length 0 (test_layer.py checks it)."""
    kw = dict(num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional)
    ref = torch.nn.LSTM(4, 5, **kw).to(getattr(torch, dtype))
    m = lstmx.LSTM(4, 5, **kw, dtype=dtype)
    for with_state in (False, True):
        compare(torch, ref, m, T=7, B=5, with_state=with_state, lengths=[3, 7, 1, 5, 7])


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,lengths", [
    (1, False, False, None), (2, True, False, None), (2, True, True, [3, 7, 1, 5, 7]),
    (3, False, True, [6, 2, 7, 7, 4])])
def test_projection_matches_torch(torch: Any, dtype: str, num_layers: int, bidirectional: bool,
                                  batch_first: bool, lengths: list[int] | None) -> None:
    """proj_size (weight_hr_l{k}), alone and with stacks, both directions, PackedSequences."""
    kw = dict(num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional,
              proj_size=3)
    ref = torch.nn.LSTM(4, 6, **kw).to(getattr(torch, dtype))
    m = lstmx.LSTM(4, 6, **kw, dtype=dtype)
    for with_state in (False, True):
        compare(torch, ref, m, T=7, B=5, with_state=with_state, lengths=lengths)


def test_state_dict_loads_both_ways(torch: Any) -> None:
    m = lstmx.LSTM(6, 8, 2, batch_first=True, bidirectional=True, seed=3)
    ref = torch.nn.LSTM(6, 8, 2, batch_first=True, bidirectional=True)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 4, 6)).astype(np.float32)
    with torch.inference_mode():
        yt, (ht, ct) = ref(torch.from_numpy(x))
    y, (hn, cn) = m(x)
    for a, b in ((y, yt), (hn, ht), (cn, ct)):
        assert_close(a, b.numpy(), np.float32)
    other = lstmx.LSTM(6, 8, 2, batch_first=True, bidirectional=True, seed=4)
    other.load_state_dict(dict(ref.named_parameters()))  # grad-requiring parameters load too
    for k, a in other.named_parameters().items():
        np.testing.assert_array_equal(a, m.state_dict()[k], err_msg=k)
