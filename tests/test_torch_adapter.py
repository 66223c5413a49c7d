"""lstmx.torch.LSTM, the drop-in for torch.nn.LSTM: autograd's gradcheck, agreement with
torch.nn.LSTM (forward, every gradient, PackedSequences, unbatched input), state_dict both ways,
a short training run with Adam, training/eval masks and clear errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from conftest import assert_close, require

import lstmx

PROJ = pytest.mark.filterwarnings("ignore:LSTM with projections")


@pytest.fixture(scope="module")
def torch() -> Any:
    return require("torch")


@pytest.fixture(scope="module")
def lt(torch: Any) -> Any:
    import lstmx.torch
    return lstmx.torch


def test_core_does_not_import_torch() -> None:
    code = "import sys, lstmx; assert 'torch' not in sys.modules, 'lstmx imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def same_init(torch: Any, lt: Any, *args: Any, **kw: Any) -> tuple[Any, Any]:
    """lstmx.torch.LSTM and torch.nn.LSTM made after the same torch.manual_seed."""
    torch.manual_seed(1)
    m = lt.LSTM(*args, **kw)
    torch.manual_seed(1)
    ref = torch.nn.LSTM(*args, **kw)
    return m, ref


@PROJ
def test_initialisation_and_parameters_as_torch(torch: Any, lt: Any) -> None:
    m, ref = same_init(torch, lt, 3, 5, 2, bidirectional=True, proj_size=2)
    assert [(n, p.shape) for n, p in m.named_parameters()] == \
        [(n, p.shape) for n, p in ref.named_parameters()]
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        assert isinstance(p, torch.nn.Parameter) and torch.equal(p, q), n
    assert repr(m) == "LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)"
    e = lt.LSTM(3, 4, peephole=True, layer_norm=True, forget_bias=1.0)
    names = [n for n, _ in e.named_parameters()]
    assert names == list(lstmx.LSTM(3, 4, peephole=True, layer_norm=True).named_parameters())
    assert torch.equal(e.ln_gain_c_l0, torch.ones(4)) and torch.equal(e.ln_bias_c_l0,
                                                                        torch.zeros(4))
    assert torch.all(e.bias_ih_l0[4:8] == 1.0) and torch.all(e.bias_hh_l0[4:8] == 0.0)
    d = e.double()
    assert d is e and all(p.dtype == torch.float64 for p in e.parameters())
    assert all(p.dtype == torch.float32 for p in e.to(torch.float32).parameters())


def run(torch: Any, mod: Any, x: Any, hx: Any, lengths: list[int] | None) -> tuple[Any, ...]:
    """``mod``'s (y, h_n, c_n) as padded tensors; ``lengths``: x goes in as a PackedSequence."""
    if lengths is None:
        y, (hn, cn) = mod(x, hx)
        return y, hn, cn
    rnn = torch.nn.utils.rnn
    packed = rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=mod.batch_first,
                                      enforce_sorted=False)
    out, (hn, cn) = mod(packed, hx)
    if not isinstance(mod, torch.nn.LSTM):  # the same packing as the input
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        assert torch.equal(out.sorted_indices, packed.sorted_indices)
        assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
    y, _ = rnn.pad_packed_sequence(out, batch_first=mod.batch_first,
                                   total_length=x.shape[1 if mod.batch_first else 0])
    return y, hn, cn


CONFIGS = [  # seed of a random configuration, dtype
    *((s, "float64") for s in range(8)), *((s, "float32") for s in range(8, 12))]


@PROJ
@pytest.mark.parametrize("seed,dtype", CONFIGS)
def test_matches_torch_on_random_configurations(torch: Any, lt: Any, seed: int,
                                                dtype: str) -> None:
    """Outputs, final states and the gradients of input, hx and every parameter."""
    rng = np.random.default_rng(seed)
    L, D, bf, bias = int(rng.integers(1, 4)), bool(rng.integers(2)), bool(rng.integers(2)), \
        bool(rng.integers(2))
    I, H = int(rng.integers(1, 6)), int(rng.integers(2, 7))
    P = int(rng.integers(1, H)) if rng.integers(2) else 0
    T, B = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    mode = ["padded", "packed", "unbatched"][seed % 3]
    kw = dict(num_layers=L, bias=bias, batch_first=bf, bidirectional=D, proj_size=P)
    tdt = getattr(torch, dtype)
    m, ref = same_init(torch, lt, I, H, **kw)
    m, ref = m.to(tdt), ref.to(tdt)
    m.flatten_parameters()
    unbatched = mode == "unbatched"
    xs = (T, I) if unbatched else (B, T, I) if bf else (T, B, I)
    x = torch.randn(xs, dtype=tdt, requires_grad=True)
    lengths = [int(v) for v in rng.integers(1, T + 1, B)] if mode == "packed" else None
    LD, sb = L * (2 if D else 1), () if unbatched else (B,)
    hx = tuple(torch.randn(LD, *sb, n, dtype=tdt, requires_grad=True)
               for n in (P or H, H)) if rng.integers(2) else None
    outs = []
    for mod in (m, ref):
        for t in (x, *(hx or ())):
            t.grad = None
        y, hn, cn = run(torch, mod, x, hx, lengths)
        g = torch.Generator().manual_seed(seed)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=tdt)).sum() for t in (y, hn, cn))
        loss.backward()
        grads = [t.grad for t in (x, *(hx or ()))] + [p.grad for p in mod.parameters()]
        outs.append([y, hn, cn, *grads])
    for i, (a, b) in enumerate(zip(*outs)):
        assert_close(a.detach().numpy(), b.detach().numpy(), np.dtype(dtype), f"output {i}")


VARIANTS = {
    "plain": dict(),
    "stack": dict(num_layers=2, bidirectional=True, proj_size=2, batch_first=True),
    "peephole_clip": dict(peephole=True, clip=0.3),
    "reverse_no_bias": dict(reverse=True, bias=False, proj_size=2),
    "layer_norm_masks": dict(num_layers=2, layer_norm=True, zoneout_h=0.3, zoneout_c=0.2,
                             recurrent_dropout=0.25, dropout=0.4, input_forget=True),
}


@PROJ
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck(torch: Any, lt: Any, variant: str, packed: bool) -> None:
    """Autograd's gradcheck (float64) of output and final state against input, hx and every
    parameter; the random masks are seeded the same for every call."""
    m = lt.LSTM(3, 4, **VARIANTS[variant]).double()
    L, D = m.num_layers, 2 if m.bidirectional else 1
    T, B = 4, 3
    x = torch.randn((B, T, 3) if m.batch_first else (T, B, 3), dtype=torch.float64,
                    requires_grad=True)
    hx = tuple(torch.randn(L * D, B, n, dtype=torch.float64, requires_grad=True)
               for n in (m.proj_size or 4, 4))
    lengths = [2, 4, 3] if packed else None

    def f(*_: Any) -> tuple[Any, ...]:
        torch.manual_seed(5)
        return run(torch, m, x, hx, lengths)

    assert torch.autograd.gradcheck(f, (x, *hx, *m.parameters()))


@PROJ
def test_state_dict_both_ways(torch: Any, lt: Any) -> None:
    kw = dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
    m, ref = lt.LSTM(4, 6, **kw), torch.nn.LSTM(4, 6, **kw)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        for a, b in zip(run(torch, m, x, None, None), run(torch, ref, x, None, None)):
            assert_close(a.numpy(), b.numpy(), np.float32)
    torch.nn.init.normal_(ref.weight_hr_l1_reverse)
    m.load_state_dict(ref.state_dict())
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n
    e = lt.LSTM(4, 6, peephole=True)
    with pytest.raises(RuntimeError, match="peephole_l0"):
        e.load_state_dict(torch.nn.LSTM(4, 6).state_dict())


def test_training_with_adam_as_torch(torch: Any, lt: Any) -> None:
    """Embedding -> LSTM -> Linear, 20 steps of Adam from the same weights: the same losses."""
    def model(rnn: Any) -> Any:
        torch.manual_seed(3)
        net = torch.nn.ModuleDict(dict(emb=torch.nn.Embedding(11, 5),
                                       rnn=rnn(5, 7, 2, batch_first=True),
                                       out=torch.nn.Linear(7, 11)))
        return net.double()

    tokens = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(0))
    curves = []
    for rnn in (lt.LSTM, torch.nn.LSTM):
        net = model(rnn)
        opt = torch.optim.Adam(net.parameters(), lr=0.02)
        losses = []
        for _ in range(20):
            opt.zero_grad()
            y, _ = net["rnn"](net["emb"](tokens[:, :-1]))
            loss = torch.nn.functional.cross_entropy(net["out"](y).flatten(0, 1),
                                                     tokens[:, 1:].flatten())
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-8, atol=1e-10)
    assert curves[0][-1] < curves[0][0] - 0.2  # it learns


def test_training_and_eval_modes(torch: Any, lt: Any) -> None:
    """Training draws masks from torch's generator (the same with and without autograd); eval
    is deterministic and equals lstmx.LSTM's inference (zoneout's expectation)."""
    m = lt.LSTM(3, 4, 2, dropout=0.5, zoneout_h=0.3, recurrent_dropout=0.2).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.manual_seed(0)
    y1, _ = m(x)
    y2, _ = m(x)
    assert not torch.allclose(y1, y2)
    torch.manual_seed(0)
    with torch.no_grad():
        y3, _ = m(x)
    assert torch.equal(y1.detach(), y3)
    m.eval()
    with torch.inference_mode():
        ye, (he, ce) = m(x)
    with torch.no_grad():
        assert not ye.requires_grad and torch.equal(ye, m(x)[0])
    core = lstmx.LSTM(3, 4, 2, dropout=0.5, zoneout_h=0.3, recurrent_dropout=0.2,
                      dtype="float64")
    core.load_state_dict(m.state_dict())
    yc, (hc, cc) = core(x.numpy())
    for a, b in ((ye, yc), (he, hc), (ce, cc)):
        assert_close(a.numpy(), b, np.float64)
    with pytest.raises(NotImplementedError, match="zoneout"):  # no gradient of the expectation
        m(x)
    d = lt.LSTM(3, 4, 2, dropout=0.5).double().eval()  # eval with gradients: no dropout
    y, _ = d(x)
    with torch.no_grad():
        assert torch.equal(y.detach(), d(x)[0])
    t = lt.LSTM(3, 4, 2).double()  # training, no random mask: without autograd, the inference
    y, _ = t(x)                      # kernels, bitwise the training forward's
    with torch.no_grad():
        assert torch.equal(y.detach(), t(x)[0])


def test_bad_input_raises_clear_errors(torch: Any, lt: Any) -> None:
    m = lt.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    cases: list[tuple[Any, str, Any]] = [
        (lambda: m(x.double()), "input: expected a CPU tensor", TypeError),
        (lambda: m(x.numpy()), "input: expected a Tensor or a PackedSequence", TypeError),
        (lambda: m(torch.randn(5, 2, 4)), "x: expected 3 input features", ValueError),
        (lambda: m(torch.randn(5)), "x: expected a 3-D array", ValueError),
        (lambda: m(x, torch.zeros(1, 2, 4)), "hx: expected a tuple", TypeError),
        (lambda: m(x, (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4))), "h0: expected shape",
         ValueError),
        (lambda: m(x, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4).double())),
         "c_0: expected a CPU tensor", TypeError),
        (lambda: lt.LSTM(3, 4, dtype=torch.float16), "dtype: expected torch.float32",
         TypeError),
        (lambda: lt.LSTM(3, 4, device="meta"), "device: lstmx runs on the CPU", ValueError),
        (lambda: lt.LSTM(3, 4, proj_size=4), "proj_size: expected less", ValueError),
        (lambda: lt.LSTM(3, 0), "hidden_size", ValueError),
        (lambda: lt.LSTM(3, 4, bidirectional=True, reverse=True), "reverse", ValueError),
        (lambda: lt.LSTM(3, 4).half(), "parameters: lstmx.torch.LSTM needs CPU float32",
         TypeError),
    ]
    for call, match, kind in cases:
        with pytest.raises(kind, match=match):
            call()


def test_tensors_cross_without_copies(torch: Any, lt: Any, monkeypatch: Any) -> None:
    """Contiguous CPU tensors reach lstmx's kernels as views, and results come back as views:
    the input, the parameters, the outputs, and in backward dy and the gradients."""
    seen: dict[str, Any] = {}
    forward_train, backward = lstmx.LSTM.forward_train, lstmx.LSTM.backward

    def spy_forward(self: Any, x: Any, *args: Any) -> Any:
        seen["x"], seen["w"] = x, self.weight_hh_l0
        out = forward_train(self, x, *args)
        seen["y"] = out[0]
        return out

    def spy_backward(self: Any, tape: Any, dy: Any, *args: Any) -> Any:
        out = backward(self, tape, dy, *args)
        seen["dy"], seen["dx"], seen["dw"] = dy, out[0], out[2]["weight_hh_l0"]
        return out

    monkeypatch.setattr(lstmx.LSTM, "forward_train", spy_forward)
    monkeypatch.setattr(lstmx.LSTM, "backward", spy_backward)
    m = lt.LSTM(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    y, _ = m(x)
    dy = torch.randn(5, 2, 4)
    y.backward(dy)
    for name, array, tensor in (("x", "x", x), ("weight", "w", m.weight_hh_l0), ("y", "y", y),
                                ("dy", "dy", dy), ("dx", "dx", x.grad),
                                ("dweight", "dw", m.weight_hh_l0.grad)):
        assert np.shares_memory(seen[array], tensor.detach().numpy()), name
