"""Agreement with torch.nn.LSTM: forward, autograd gradients, and state_dict exchange."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import require

import lstmx


@pytest.fixture(scope="module")
def torch() -> Any:
    t = require("torch")
    t.manual_seed(0)
    return t


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("T,B,I,H,bias,batch_first", [
    (1, 1, 3, 4, True, False),
    (7, 3, 5, 13, True, True),
    (12, 4, 16, 16, False, False),
    (5, 2, 9, 33, True, False),
])
def test_matches_torch_forward_and_gradients(torch: Any, dtype: str, T: int, B: int, I: int,
                                             H: int, bias: bool, batch_first: bool) -> None:
    tdt = getattr(torch, dtype)
    ref = torch.nn.LSTM(I, H, bias=bias, batch_first=batch_first).to(tdt)
    m = lstmx.LSTM(I, H, bias=bias, batch_first=batch_first, dtype=dtype)
    m.load_state_dict(ref.state_dict())  # torch tensors load directly
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(*shape, dtype=tdt, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=tdt, requires_grad=True)
    c0 = torch.randn(1, B, H, dtype=tdt, requires_grad=True)
    yt, (ht, ct) = ref(x, (h0, c0))
    dy, dh, dc = torch.randn_like(yt), torch.randn_like(ht), torch.randn_like(ct)
    torch.autograd.backward([yt, ht, ct], [dy, dh, dc])

    y, (hn, cn), tape = m.forward_train(x.detach().numpy(), (h0.detach().numpy(),
                                                             c0.detach().numpy()))
    dx, (dh0, dc0), grads = m.backward(tape, dy.numpy(), dh.numpy(), dc.numpy())
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    for a, b in ((y, yt), (hn, ht), (cn, ct), (dx, x.grad), (dh0, h0.grad), (dc0, c0.grad)):
        np.testing.assert_allclose(a, b.detach().numpy(), **tol)
    named = dict(ref.named_parameters())
    assert set(grads) == set(named)
    for k, g in grads.items():
        np.testing.assert_allclose(g, named[k].grad.numpy(), err_msg=k, **tol)


def test_state_dict_loads_both_ways(torch: Any) -> None:
    m = lstmx.LSTM(6, 8, seed=3)
    ref = torch.nn.LSTM(6, 8)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((4, 2, 6)).astype(np.float32)
    with torch.inference_mode():
        yt, _ = ref(torch.from_numpy(x))
    np.testing.assert_allclose(m(x)[0], yt.numpy(), rtol=1e-5, atol=1e-6)
    # grad-requiring parameters load too
    m.load_state_dict(dict(ref.named_parameters()))
