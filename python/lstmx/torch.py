"""``lstmx.torch.LSTM``: a drop-in for ``torch.nn.LSTM`` that runs lstmx's kernels.

The only module of lstmx that imports torch. The parameters are ``torch.nn.Parameter``\\ s with
``torch.nn.LSTM``'s names, shapes and order (plus lstmx's extras), so ``state_dict()`` moves
both ways; forward and backward are an internal :class:`lstmx.LSTM`'s ``forward_train`` and
``backward``, wrapped in a ``torch.autograd.Function``. CPU tensors, float32 or float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import layer as _layer
from .functional import AnyArray

__all__ = ["LSTM"]

_DTYPES = (torch.float32, torch.float64)


def _np(t: Tensor | None) -> AnyArray | None:
    """A CPU tensor as a NumPy array without copying (when it is contiguous)."""
    return None if t is None else t.detach().contiguous().numpy()


def _t(a: AnyArray) -> Tensor:
    """A NumPy result as a tensor (copied only if it is not C-contiguous and writeable)."""
    return torch.from_numpy(np.require(a, requirements=["C", "W"]))


class _LSTMFunction(torch.autograd.Function):
    """``(x, h0, c0, *params) -> (y, h_n, c_n)`` through lstmx's training forward and backward."""

    @staticmethod
    def forward(ctx: Any, module: LSTM,
                lengths: AnyArray | None, seed: int, x: Tensor, h0: Tensor | None,
                c0: Tensor | None, *params: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        m = module._bind(params)
        hx = None if h0 is None else (_np(h0), _np(c0))
        y, (hn, cn), tape = m.forward_train(_np(x), hx, lengths, seed)
        ctx.lstm, ctx.tape, ctx.has_hx = m, tape, h0 is not None
        return _t(y), _t(hn), _t(cn)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: Tensor | None, dh: Tensor | None, dc: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        dx, (dh0, dc0), grads = ctx.lstm.backward(ctx.tape, _np(dy), _np(dh), _np(dc))
        states = (_t(dh0), _t(dc0)) if ctx.has_hx else (None, None)
        return (None, None, None, _t(dx), *states, *(_t(g) for g in grads.values()))


class LSTM(nn.Module):
    """``torch.nn.LSTM`` on lstmx's kernels: the same arguments, parameters, inputs and outputs.

    The first ten arguments are ``torch.nn.LSTM``'s (``dtype`` float32 or float64, ``device``
    the CPU). The keyword-only extras are :class:`lstmx.LSTM`'s variants (``peephole``,
    ``clip``, ``input_forget``, ``forget_bias``, ``reverse``, ``layer_norm``, ``zoneout_h``,
    ``zoneout_c``, ``recurrent_dropout``); their parameters (``peephole_l{k}{sfx}``,
    ``ln_*_l{k}{sfx}``) follow each pass's own. Initialised like ``torch.nn.LSTM`` from torch's
    generator (uniform in ``[-1/sqrt(H), 1/sqrt(H)]``, PyTorch's parameters first; layer-norm
    gains 1, biases 0), so the same ``torch.manual_seed`` gives ``torch.nn.LSTM``'s weights.

    ``forward(input, hx=None)`` returns ``(output, (h_n, c_n))`` like ``torch.nn.LSTM``: input
    ``[T, B, I]`` (``[B, T, I]`` batch_first), ``[T, I]`` unbatched, or a ``PackedSequence``
    (then output is one too). In training mode (``module.train()``) dropout, zoneout and
    recurrent dropout draw their masks (seeded from torch's generator); in eval mode dropout is
    off and zoneout uses its expectation (whose gradient lstmx does not compute: with zoneout,
    eval mode needs ``torch.no_grad()``). Gradients flow to input, ``hx`` and every parameter.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, peephole: bool = False, clip: float | None = None,
                 input_forget: bool = False, forget_bias: float | None = None,
                 reverse: bool = False, layer_norm: bool = False, zoneout_h: float = 0.0,
                 zoneout_c: float = 0.0, recurrent_dropout: float = 0.0) -> None:
        super().__init__()
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in _DTYPES:
            raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
        device = torch.device("cpu") if device is None else torch.device(device)
        if device.type != "cpu":
            raise ValueError(f"device: lstmx runs on the CPU, got {device}")
        self._lstm = _layer.LSTM(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size, dtype=str(dtype).removeprefix("torch."), seed=0, peephole=peephole,
            clip=clip, input_forget=input_forget, forget_bias=forget_bias, reverse=reverse,
            layer_norm=layer_norm, zoneout_h=zoneout_h, zoneout_c=zoneout_c,
            recurrent_dropout=recurrent_dropout)
        m = self._lstm
        self.input_size, self.hidden_size, self.num_layers = m.input_size, m.hidden_size, \
            m.num_layers
        self.bias, self.batch_first, self.dropout = m.bias, m.batch_first, m.dropout
        self.bidirectional, self.proj_size = m.bidirectional, m.proj_size
        for name, shape in m._shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``torch.nn.LSTM``'s initialisation (then the extras', and ``forget_bias``)."""
        k = 1.0 / math.sqrt(self.hidden_size)
        params = dict(self.named_parameters())
        with torch.no_grad():
            # PyTorch's parameters first, so the extras do not change them
            for name in sorted(params, key=lambda n: n.startswith(_layer._EXTRAS)):
                p = params[name]
                if name.startswith("ln_"):
                    p.fill_(0.0 if name.startswith("ln_bias") else 1.0)
                else:
                    nn.init.uniform_(p, -k, k)
            fb, H = self._lstm.forget_bias, self.hidden_size
            if fb is not None:
                for name, p in params.items():
                    if name.startswith("bias_"):
                        p[H:2 * H] = 0.0 if "_hh_" in name else fb

    # ---- parameters: torch's, read by the internal layer ----
    def _check(self) -> torch.dtype:
        """The parameters' dtype; they must be CPU float32 or float64, all alike."""
        kinds = {(p.dtype, p.device.type) for p in self.parameters()}
        dtype, dev = next(iter(kinds))
        if len(kinds) != 1 or dtype not in _DTYPES or dev != "cpu":
            raise TypeError(f"parameters: lstmx.torch.LSTM needs CPU float32 or float64 "
                            f"parameters, all alike, got {sorted(map(str, kinds))}")
        return dtype

    def _apply(self, fn: Any, recurse: bool = True) -> LSTM:
        """``.to()``, ``.double()``...: then checks the parameters are still CPU float32/64."""
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]  # unannotated in torch
        self._check()
        return self

    def _bind(self, params: tuple[Tensor, ...]) -> _layer.LSTM:
        """The internal layer, reading ``params`` (in its order) as NumPy arrays, zero-copy."""
        m = self._lstm
        m.dtype = np.dtype(str(params[0].dtype).removeprefix("torch."))
        for name, p in zip(m._shapes, params):
            setattr(m, name, _np(p))
        return m

    def flatten_parameters(self) -> None:
        """Nothing to do (``torch.nn.LSTM``'s, for cuDNN; kept so callers of it run)."""

    # ---- forward ----
    def _random_masks(self) -> bool:
        """Whether training draws random masks (dropout, zoneout, recurrent dropout)."""
        m = self._lstm
        return bool((m.dropout and self.num_layers > 1) or m.zoneout_h or m.zoneout_c
                    or m.recurrent_dropout)

    def _seed(self) -> int:
        """A mask seed from torch's generator (drawn only if some mask is random)."""
        return int(torch.randint(0, 2**62, (1,)).item()) if self._random_masks() else 0

    def forward(self, input: Tensor | PackedSequence,
                hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        """``(output, (h_n, c_n))``, as ``torch.nn.LSTM``'s forward."""
        dtype = self._check()
        packed = isinstance(input, PackedSequence)
        lengths = None
        if isinstance(input, PackedSequence):
            x, lens = pad_packed_sequence(input, batch_first=self.batch_first)
            lengths = lens.numpy()
        elif isinstance(input, Tensor):
            x = input
        else:
            raise TypeError(f"input: expected a Tensor or a PackedSequence, got "
                            f"{type(input).__name__}")
        h0 = c0 = None
        if hx is not None:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2
                    and all(isinstance(s, Tensor) for s in hx)):
                raise TypeError("hx: expected a tuple of two tensors (h_0, c_0)")
            h0, c0 = hx
        for name, t in (("input", x), ("h_0", h0), ("c_0", c0)):
            if t is not None and (t.dtype != dtype or t.device.type != "cpu"):
                raise TypeError(f"{name}: expected a CPU tensor of the parameters' dtype "
                                f"{dtype}, got {t.dtype} on {t.device}")
        params = tuple(self.parameters())
        m = self._lstm
        need_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, h0, c0, *params))
        if need_grad:
            if not self.training and (m.zoneout_h or m.zoneout_c):
                raise NotImplementedError("zoneout_h, zoneout_c: gradients in eval mode are not "
                                          "supported (use train() or torch.no_grad())")
            saved = m.dropout, m.recurrent_dropout
            if not self.training:  # eval: no dropout
                m.dropout = m.recurrent_dropout = 0.0
            try:
                # (Function.apply is unannotated in torch)
                y, hn, cn = _LSTMFunction.apply(  # type: ignore[no-untyped-call]
                    self, lengths, self._seed(), x, h0, c0, *params)
            finally:
                m.dropout, m.recurrent_dropout = saved
        else:
            state = None if hx is None else (_np(h0), _np(c0))
            m = self._bind(params)
            if self.training and self._random_masks():  # (else the same as inference)
                ya, (ha, ca), _ = m.forward_train(_np(x), state, lengths, self._seed())
            else:
                ya, (ha, ca) = m(_np(x), state, lengths)
            y, hn, cn = _t(ya), _t(ha), _t(ca)
        if packed:
            assert isinstance(input, PackedSequence) and lengths is not None
            order = input.sorted_indices
            if order is not None:
                y = y.index_select(0 if self.batch_first else 1, order)
            lens = torch.from_numpy(lengths if order is None else lengths[order.numpy()])
            data = pack_padded_sequence(y, lens, batch_first=self.batch_first).data
            return PackedSequence(data, input.batch_sizes, input.sorted_indices,
                                  input.unsorted_indices), (hn, cn)
        return y, (hn, cn)

    def extra_repr(self) -> str:
        """The constructor's arguments that are not the default (as ``repr(lstmx.LSTM)``)."""
        r = repr(self._lstm)
        return r[r.index("(") + 1:-1].replace(", dtype=float64", "")
