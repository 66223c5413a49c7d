"""Weights to and from Keras (``keras.layers.LSTM``), without Keras itself.

Keras keeps one layer and direction as ``kernel [I, 4H]`` (applied as ``x @ kernel``),
``recurrent_kernel [H, 4H]`` and ``bias [4H]`` (``use_bias=False``: none), gate blocks in the
order i, f, c, o: the same blocks as lstmx's i, f, g, o, transposed. Keras has one bias;
lstmx's two enter the gates as their sum, so :func:`from_keras` puts it in ``bias_ih`` with
``bias_hh`` zero. Keras's defaults ``activation="tanh"``, ``recurrent_activation="sigmoid"``
are lstmx's (old Keras's ``hard_sigmoid`` is not).

For the seeds' per-gate layout, :func:`to_seed_params` and :func:`from_seed_params` are
:func:`lstmx.reference.to_seed_params` and :func:`lstmx.reference.from_seed_params`, re-exported
here so that every layout converter has one home:
``to_seed_params(w_ih, w_hh, b_ih, b_hh) -> {"W_i": [H + I, H], "b_i": [H], ...}`` (weights on
``[h_{t-1}, x_t]``) and ``from_seed_params(p) -> (w_ih, w_hh, b_ih, b_hh)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .functional import Array, ArrayLike, _call_dtype, _float_array
from .layer import LSTM
from .reference import from_seed_params, to_seed_params

__all__ = ["from_keras", "to_keras", "to_seed_params", "from_seed_params"]

_ONE_PASS = {"num_layers": 1, "bidirectional": False, "proj_size": 0}  # what Keras can hold


def from_keras(kernel: ArrayLike, recurrent_kernel: ArrayLike, bias: ArrayLike | None = None,
               **layer_kwargs: Any) -> LSTM:
    """A single-layer, single-direction :class:`lstmx.LSTM` with Keras's weights.

    ``kernel [I, 4H]``, ``recurrent_kernel [H, 4H]``, ``bias [4H]`` or ``None`` (a layer with
    ``bias=False``). ``layer_kwargs`` go to :class:`lstmx.LSTM` (e.g. ``batch_first=True``
    as Keras's inputs ``[B, T, I]``, ``reverse=True`` for ``go_backwards``, ``dtype``: by
    default the kernel's); lstmx-only parameters (peepholes, layer norm) keep their initial
    values. With ``reverse=True`` the outputs stay at their time positions (ONNX's placement):
    Keras's ``go_backwards`` sequence output is lstmx's ``y`` reversed in time (``y[:, ::-1]``
    batch-first); the final states are the same.
    """
    dt, src = _call_dtype(("kernel", kernel), ("recurrent_kernel", recurrent_kernel))
    k = _float_array("kernel", kernel, dt, src)
    rk = _float_array("recurrent_kernel", recurrent_kernel, dt, src)
    if rk.ndim != 2 or rk.shape[1] != 4 * rk.shape[0] or rk.shape[0] == 0:
        raise ValueError(f"recurrent_kernel: expected shape [H, 4H], got {rk.shape}")
    H = rk.shape[0]
    if k.ndim != 2 or k.shape[1] != 4 * H or k.shape[0] == 0:
        raise ValueError(f"kernel: expected shape [I, 4H] = [I, {4 * H}], got {k.shape}")
    b = None if bias is None else _float_array("bias", bias, dt, src)
    if b is not None and b.shape != (4 * H,):
        raise ValueError(f"bias: expected shape [4H] = ({4 * H},), got {b.shape}")
    for name, want in (("input_size", k.shape[0]), ("hidden_size", H), *_ONE_PASS.items()):
        if name in layer_kwargs and layer_kwargs[name] != want:
            raise ValueError(f"{name}: a Keras LSTM layer gives {want!r}, got "
                             f"{layer_kwargs[name]!r}")
        layer_kwargs.pop(name, None)
    layer_kwargs.setdefault("dtype", dt)
    layer = LSTM(k.shape[0], H, bias=b is not None, **layer_kwargs)
    state = {"weight_ih_l0": k.T, "weight_hh_l0": rk.T}
    if b is not None:
        state.update(bias_ih_l0=b, bias_hh_l0=np.zeros_like(b))
    layer.load_state_dict(state, strict=False)  # the extras keep their initial values
    return layer


def to_keras(lstm: LSTM) -> tuple[Array, Array, Array | None]:
    """``(kernel [I, 4H], recurrent_kernel [H, 4H], bias [4H] or None)`` of a single-layer,
    single-direction :class:`lstmx.LSTM` without projection (copies; ``bias`` is
    ``bias_ih + bias_hh``, ``None`` for ``bias=False``).

    Keras's LSTM has no peepholes, clip, coupled gates, layer norm or zoneout: a layer using
    any of them raises ``ValueError``. ``reverse=True`` is Keras's ``go_backwards=True``.
    """
    if not isinstance(lstm, LSTM):
        raise TypeError(f"lstm: expected an lstmx.LSTM, got {type(lstm).__name__}")
    for name, want in _ONE_PASS.items():
        if getattr(lstm, name) != want:
            raise ValueError(f"lstm: Keras's LSTM holds one layer and direction without "
                             f"projection; this one has {name}={getattr(lstm, name)!r}")
    for name in ("peephole", "clip", "input_forget", "layer_norm", "zoneout_h", "zoneout_c"):
        if getattr(lstm, name):
            raise ValueError(f"lstm: Keras's LSTM has no {name}; this layer has "
                             f"{name}={getattr(lstm, name)!r}")
    p = lstm.named_parameters()
    bias = p["bias_ih_l0"] + p["bias_hh_l0"] if lstm.bias else None
    return (np.ascontiguousarray(p["weight_ih_l0"].T), np.ascontiguousarray(p["weight_hh_l0"].T),
            bias)
