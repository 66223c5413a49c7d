"""The ONNX ``LSTM`` operator (opset 14), computed by lstmx.

:func:`lstm` takes ONNX's inputs and attributes and returns ONNX's outputs; :func:`run_node`
evaluates an ``LSTM`` ``NodeProto`` (or the first one of a ``ModelProto``). Shapes (T steps,
B batch, I inputs, H hidden units, D = 2 for ``direction="bidirectional"``, else 1; ONNX's gate
order i, o, f, c):

=================  ======================================  =================================
input / output     ``layout=0``                            ``layout=1`` (batch-major)
=================  ======================================  =================================
``X``              ``[T, B, I]``                           ``[B, T, I]``
``W``              ``[D, 4H, I]``                          the same
``R``              ``[D, 4H, H]``                          the same
``B``              ``[D, 8H]`` (``Wb`` then ``Rb``)        the same
``sequence_lens``  ``[B]`` ints in ``[0, T]``              the same
``initial_h/c``    ``[D, B, H]``                           ``[B, D, H]``
``P``              ``[D, 3H]`` peepholes (i, o, f)         the same
``Y``              ``[T, D, B, H]``                        ``[B, T, D, H]``
``Y_h``, ``Y_c``   ``[D, B, H]``                           ``[B, D, H]``
=================  ======================================  =================================

Two paths:

* the default activations (``Sigmoid, Tanh, Tanh`` for a direction) run lstmx's fused kernels
  (:func:`lstmx.lstm`; the reverse direction is ``reverse=True`` over the same lengths);
* any other activations run the *general path*, a plain vectorised NumPy loop over the steps
  (slow, but exact to the spec): ``Sigmoid, Tanh, Relu, HardSigmoid, Affine, LeakyRelu,
  ThresholdedRelu, ScaledTanh, Elu, Softsign, Softplus``.

Sequences of length 0: ``Y_h`` and ``Y_c`` are 0 there, as onnxruntime gives (the ONNX oracle);
:func:`lstmx.lstm` and PyTorch return the initial state instead. ``Y`` is 0 past each
sequence's end.

The ``onnx`` package is needed only by :func:`run_node` (imported there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .functional import (AnyArray, Array, ArrayLike, _check_clip, _check_lengths, _expect_shape,
                         _flag, _float_array, lstm as _lstmx_lstm)

__all__ = ["lstm", "run_node", "ACTIVATIONS"]

_INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
_TO_LSTMX = [0, 2, 3, 1]  # lstmx's gate blocks i, f, g, o are ONNX's blocks 0, 2, 3, 1
_PEEP_TO_LSTMX = [0, 2, 1]  # lstmx's peephole rows p_i, p_f, p_o are ONNX's P blocks i, f, o
_DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")


def _sigmoid(x: Array) -> Array:
    s: Array = 0.5 * (np.tanh(0.5 * x) + 1)  # no overflow for large |x|
    return s


# name (lower case) -> (function of x, alpha, beta; alpha's default; beta's default). A default
# of None: the function does not use that parameter (it takes none from the lists). Defaults
# are those of the ONNX operators of the same names, as the spec says (HardSigmoid 0.2, 0.5;
# LeakyRelu 0.01; ThresholdedRelu 1.0; Elu 1.0; Affine 1.0, 0.0; ScaledTanh, whose operator
# states none, 1.0, 1.0). onnxruntime 1.31 agrees except for Affine, ThresholdedRelu and
# ScaledTanh, where it takes 0 for a value missing from the lists: give them explicitly.
ACTIVATIONS: dict[str, tuple[Callable[[Array, float, float], Array], float | None,
                             float | None]] = {
    "sigmoid": (lambda x, a, b: _sigmoid(x), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x >= a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0))), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0, x), None, None),
}

_Act = tuple[str, float, float]  # (lower-case name, alpha, beta)


def _activations(activations: Sequence[str | bytes] | None, alpha: Sequence[float] | None,
                 beta: Sequence[float] | None, D: int) -> list[_Act]:
    """The 3 * D activations (f, g, h per direction) with their alpha and beta.

    As in ONNX, ``activation_alpha`` and ``activation_beta`` are consumed in the order of the
    activations, one value by each activation that uses the parameter; missing values take the
    operator's default."""
    if activations is None:
        names = [n for _ in range(D) for n in _DEFAULT_ACTIVATIONS]
    else:
        if isinstance(activations, (str, bytes)):
            raise TypeError("activations: expected a list of names, got a single string")
        names = [a.decode() if isinstance(a, bytes) else a for a in activations]
        if len(names) != 3 * D:
            raise ValueError(f"activations: expected 3 per direction (f, g, h) = {3 * D} names, "
                             f"got {len(names)}")
    alphas, betas = list(alpha or []), list(beta or [])
    out = []
    for name in names:
        if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
            raise ValueError(f"activations: unsupported activation {name!r}; supported: "
                             "Sigmoid, Tanh, Relu, HardSigmoid, Affine, LeakyRelu, "
                             "ThresholdedRelu, ScaledTanh, Elu, Softsign, Softplus")
        _, a_default, b_default = ACTIVATIONS[name.lower()]
        a = (alphas.pop(0) if alphas else a_default) if a_default is not None else 0.0
        b = (betas.pop(0) if betas else b_default) if b_default is not None else 0.0
        out.append((name.lower(), float(a), float(b)))
    if alphas or betas:
        raise ValueError(f"activation_alpha, activation_beta: {len(alphas)} and {len(betas)} "
                         "values left over, not used by any activation")
    return out


def _gates(a: Array) -> Array:
    """[4H, ...] in ONNX's gate order (i, o, f, c) to lstmx's (i, f, g, o)."""
    return a.reshape(4, -1, *a.shape[1:])[_TO_LSTMX].reshape(a.shape)


def _sequence_lens(a: ArrayLike, T: int, B: int) -> AnyArray:
    """``sequence_lens [B]``: functional's check of ``lengths``, its errors named for ONNX."""
    try:
        return _check_lengths(a, T, B)
    except (TypeError, ValueError) as e:
        raise type(e)(str(e).replace("lengths", "sequence_lens", 1)) from None


def _general_pass(x: Array, w: Array, r: Array, b: Array, lens: AnyArray, h0: Array, c0: Array,
                  p: Array, acts: list[_Act], clip: float | None, input_forget: bool,
                  reverse: bool) -> tuple[Array, Array, Array]:
    """The general path: one direction with any activations, a NumPy loop over the steps, in
    ONNX's gate order. x [T, B, I], w [4H, I], r [4H, H], b [8H], h0/c0 [B, H], p [3H] (zeros
    for none); returns y [T, B, H], h_n [B, H], c_n [B, H] (0 where a length is 0)."""
    T, B, _ = x.shape
    H = r.shape[1]
    (f, fa, fb), (g, ga, gb), (h, ha, hb) = ((ACTIVATIONS[n][0], a, be) for n, a, be in acts)
    pi, po, pf = p[:H], p[H:2 * H], p[2 * H:]
    bias = b[:4 * H] + b[4 * H:]  # [4H]
    h_t, c_t = h0.copy(), c0.copy()  # [B, H]
    y = np.zeros((T, B, H), x.dtype)
    batch = np.arange(B)
    for s in range(T):
        active = s < lens  # [B]
        t = np.maximum(lens - 1 - s, 0) if reverse else np.full(B, s)  # each sequence's time
        z = x[t, batch] @ w.T + h_t @ r.T + bias  # [B, 4H] gates i, o, f, c
        zi, zo, zf, zc = (z[:, k * H:(k + 1) * H] for k in range(4))
        zi, zf = zi + pi * c_t, zf + pf * c_t
        if clip is not None:
            zi, zf, zc = (np.clip(v, -clip, clip) for v in (zi, zf, zc))
        i = f(zi, fa, fb)
        fg = 1 - i if input_forget else f(zf, fa, fb)
        c_new = fg * c_t + i * g(zc, ga, gb)
        zo = zo + po * c_new
        if clip is not None:
            zo = np.clip(zo, -clip, clip)
        h_new = f(zo, fa, fb) * h(c_new, ha, hb)
        m = active[:, None]
        h_t, c_t = np.where(m, h_new, h_t), np.where(m, c_new, c_t)
        y[t[active], batch[active]] = h_t[active]
    return y, h_t, c_t


def lstm(X: ArrayLike, W: ArrayLike, R: ArrayLike, B: ArrayLike | None = None,
         sequence_lens: ArrayLike | None = None, initial_h: ArrayLike | None = None,
         initial_c: ArrayLike | None = None, P: ArrayLike | None = None, *,
         hidden_size: int | None = None, direction: str = "forward", clip: float | None = None,
         input_forget: int = 0, activations: Sequence[str] | None = None,
         activation_alpha: Sequence[float] | None = None,
         activation_beta: Sequence[float] | None = None,
         layout: int = 0) -> tuple[Array, Array, Array]:
    """ONNX's ``LSTM`` operator: returns ``(Y, Y_h, Y_c)``.

    Inputs and attributes as in the ONNX spec (see the module docstring for the shapes);
    ``None`` for an absent optional input or attribute. float32 or float64; every array shares
    ``X``'s dtype. Bad arguments raise ``TypeError`` or ``ValueError`` naming them.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction: expected one of {', '.join(_DIRECTIONS)}, got {direction!r}")
    if layout not in (0, 1) or isinstance(layout, bool):
        raise ValueError(f"layout: expected 0 or 1, got {layout!r}")
    D = _DIRECTIONS[direction]
    clip = _check_clip(clip)
    input_forget = _flag("input_forget", input_forget)
    x = _float_array("X", X)
    dt = x.dtype
    if x.ndim != 3:
        raise ValueError(f"X: expected 3 dimensions ([seq_length, batch_size, input_size] with "
                         f"layout={layout}), got shape {x.shape}")
    if layout == 1:
        x = x.transpose(1, 0, 2)
    T, Bn, I = x.shape
    r = _float_array("R", R, dt, "X")
    if r.ndim != 3 or r.shape[0] != D or r.shape[1] != 4 * r.shape[2]:
        raise ValueError(f"R: expected shape [num_directions, 4H, H] with num_directions = {D}, "
                         f"got {r.shape}")
    H = r.shape[2]
    if hidden_size is not None and hidden_size != H:
        raise ValueError(f"hidden_size: {hidden_size} does not match R's shape {r.shape}")
    w = _float_array("W", W, dt, "X")
    _expect_shape("W", w, (D, 4 * H, I), "[num_directions, 4H, input_size]")
    b = np.zeros((D, 8 * H), dt) if B is None else _float_array("B", B, dt, "X")
    _expect_shape("B", b, (D, 8 * H), "[num_directions, 8H]")
    p = None if P is None else _float_array("P", P, dt, "X")
    if p is not None:
        _expect_shape("P", p, (D, 3 * H), "[num_directions, 3H]")
    state_desc = "[batch_size, num_directions, H]" if layout else "[num_directions, batch_size, H]"
    states = []
    for name, s in (("initial_h", initial_h), ("initial_c", initial_c)):
        a = np.zeros((D, Bn, H), dt) if s is None else _float_array(name, s, dt, "X")
        if s is not None:
            _expect_shape(name, a, (Bn, D, H) if layout else (D, Bn, H), state_desc)
        states.append(a.transpose(1, 0, 2) if layout and s is not None else a)
    h0, c0 = states
    lens = np.full(Bn, T, np.int64) if sequence_lens is None else _sequence_lens(sequence_lens,
                                                                                T, Bn)
    acts = _activations(activations, activation_alpha, activation_beta, D)

    y = np.zeros((T, D, Bn, H), dt)
    yh, yc = np.zeros((D, Bn, H), dt), np.zeros((D, Bn, H), dt)
    for d in range(D):
        reverse = direction == "reverse" or d == 1
        if tuple(n for n, _, _ in acts[3 * d:3 * d + 3]) == _DEFAULT_ACTIVATIONS:
            out = _lstmx_lstm(
                x, _gates(w[d]), _gates(r[d]), _gates(b[d, :4 * H]), _gates(b[d, 4 * H:]), h0[d],
                c0[d], lengths=None if sequence_lens is None else lens, reverse=reverse,
                peephole=None if p is None else p[d].reshape(3, H)[_PEEP_TO_LSTMX], clip=clip,
                input_forget=input_forget)
        else:
            out = _general_pass(x, w[d], r[d], b[d], lens, h0[d], c0[d],
                                np.zeros(3 * H, dt) if p is None else p[d], acts[3 * d:3 * d + 3],
                                clip, input_forget, reverse)
        y[:, d], yh[d], yc[d] = out
    yh[:, lens == 0] = 0  # onnxruntime's Y_h, Y_c for an empty sequence
    yc[:, lens == 0] = 0
    if layout == 1:
        return y.transpose(2, 0, 1, 3), yh.transpose(1, 0, 2), yc.transpose(1, 0, 2)
    return y, yh, yc


def run_node(node: Any, inputs: Sequence[ArrayLike | None] | Mapping[str, ArrayLike]
             ) -> tuple[Array, Array, Array]:
    """Evaluate an ONNX ``LSTM`` node with :func:`lstm`: returns ``(Y, Y_h, Y_c)``.

    ``node``: an ``onnx.NodeProto`` of type ``LSTM``, or an ``onnx.ModelProto`` (its graph's
    first ``LSTM`` node is run, and the graph's initialisers supply the inputs not given).
    ``inputs``: a dict from input names to arrays, or a list: for a node, one entry per node
    input in order (``None`` for absent ones); for a model, the graph's inputs that are not
    initialisers, in order. Inputs with empty names are absent.
    """
    import onnx
    from onnx import helper, numpy_helper

    known: dict[str, Any] = {}
    if isinstance(node, onnx.ModelProto):
        graph = node.graph
        known = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        found = [n for n in graph.node if n.op_type == "LSTM"]
        if not found:
            raise ValueError("node: the model's graph has no LSTM node")
        node = found[0]
        positional = [i.name for i in graph.input if i.name not in known]
    elif isinstance(node, onnx.NodeProto):
        if node.op_type != "LSTM":
            raise ValueError(f"node: expected an LSTM node, got op_type {node.op_type!r}")
        positional = list(node.input)
    else:
        raise TypeError(f"node: expected an onnx NodeProto or ModelProto, got "
                        f"{type(node).__name__}")
    if isinstance(inputs, Mapping):
        known.update(inputs)
    elif isinstance(inputs, (list, tuple)):
        if len(inputs) > len(positional):
            raise ValueError(f"inputs: expected at most {len(positional)} arrays "
                             f"({', '.join(positional)}), got {len(inputs)}")
        known.update((n, a) for n, a in zip(positional, inputs) if n and a is not None)
    else:
        raise TypeError(f"inputs: expected a list or a dict of arrays, got {type(inputs).__name__}")
    if len(node.input) > len(_INPUTS):
        raise ValueError(f"node: an LSTM has at most {len(_INPUTS)} inputs, got {len(node.input)}")
    args: dict[str, Any] = {}
    for slot, name in zip(_INPUTS, node.input):
        if name:
            if name not in known:
                raise ValueError(f"inputs: no array for the node's input {slot} ({name!r})")
            args[slot] = known[name]
    for slot in ("X", "W", "R"):
        if slot not in args:
            raise ValueError(f"node: the required input {slot} is absent")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    unknown = set(attrs) - {"hidden_size", "direction", "clip", "input_forget", "activations",
                            "activation_alpha", "activation_beta", "layout"}
    if unknown:
        raise ValueError(f"node: unknown LSTM attributes {sorted(unknown)}")
    if isinstance(attrs.get("direction"), bytes):
        attrs["direction"] = attrs["direction"].decode()
    return lstm(**args, **attrs)
