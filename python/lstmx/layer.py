"""``lstmx.LSTM``: a layer that holds its parameters, named and shaped as in ``torch.nn.LSTM``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .functional import (Array, ArrayLike, Tape, _check_memory, _check_tape, _flag, _float_array,
                         _to_numpy, lstm, lstm_backward, lstm_train)

__all__ = ["LSTM"]

State = tuple[Array, Array]


class LSTM:
    """A single-layer, single-direction LSTM with PyTorch's parameter names and layout.

    Parameters ``weight_ih_l0 [4H, I]``, ``weight_hh_l0 [4H, H]`` and, with ``bias=True``,
    ``bias_ih_l0, bias_hh_l0 [4H]`` are NumPy arrays, initialised like PyTorch: uniform in
    ``[-1/sqrt(H), 1/sqrt(H)]`` from ``numpy.random.default_rng(seed)``.

    Calling ``lstm(x, (h0, c0))`` returns ``(y, (h_n, c_n))`` with PyTorch's shapes:
    ``x [T, B, I]`` (``[B, T, I]`` with ``batch_first``, or ``[T, I]`` unbatched), state
    ``[1, B, H]`` (``[1, H]`` unbatched). ``num_layers``, ``dropout``, ``bidirectional`` and
    ``proj_size`` are accepted for forward compatibility; only their defaults are implemented.
    """

    def __init__(self, input_size: int, hidden_size: int, *, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0,
                 dtype: type | np.dtype[Any] | str = np.float32, seed: int | None = None) -> None:
        for name, v, low in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                             ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                what = "positive" if low else "non-negative"
                raise ValueError(f"{name}: expected a {what} int, got {v!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size: expected less than hidden_size = {hidden_size}, got "
                             f"{proj_size}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.number)) \
                or not 0 <= dropout <= 1:
            raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout!r}")
        bias, batch_first = _flag("bias", bias), _flag("batch_first", batch_first)
        bidirectional = _flag("bidirectional", bidirectional)
        try:
            dt = np.dtype(dtype)
        except (TypeError, ValueError) as e:
            raise TypeError(f"dtype: {e}") from None
        if dt not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {dt}")
        todo = [name for name, v, default in (
            ("num_layers", num_layers, 1), ("dropout", dropout, 0),
            ("bidirectional", bidirectional, False), ("proj_size", proj_size, 0)) if v != default]
        if todo:
            raise NotImplementedError(f"{', '.join(todo)}: only the default is implemented yet")
        I, H = int(input_size), int(hidden_size)
        # the parameters, and the float64 draws they are cast from
        _check_memory("input_size, hidden_size", 4 * H * (I + H + 2) * (8 + dt.itemsize),
                      f"the parameters of LSTM({I}, {H})")
        try:
            rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as e:
            raise (TypeError if isinstance(e, TypeError) else ValueError)(f"seed: {e}") from None
        self.input_size, self.hidden_size = I, H
        self.num_layers, self.bias, self.batch_first = 1, bias, batch_first
        self.dtype = dt
        k = 1.0 / np.sqrt(H)
        self._shapes = {"weight_ih_l0": (4 * H, I), "weight_hh_l0": (4 * H, H)}
        if self.bias:
            self._shapes.update(bias_ih_l0=(4 * H,), bias_hh_l0=(4 * H,))
        for name, shape in self._shapes.items():
            setattr(self, name, rng.uniform(-k, k, shape).astype(dt))

    # ---- parameters ----
    def named_parameters(self) -> dict[str, Array]:
        """The parameter arrays themselves (not copies), by PyTorch name; update in place."""
        return {name: getattr(self, name) for name in self._shapes}

    def state_dict(self) -> dict[str, Array]:
        """Copies of the parameters, by PyTorch name."""
        return {name: a.copy() for name, a in self.named_parameters().items()}

    def load_state_dict(self, state: Mapping[str, ArrayLike], strict: bool = True) -> None:
        """Load parameters from any array-likes (NumPy arrays, torch tensors, lists).

        Values are cast to the layer's dtype. With ``strict``, the keys must match exactly.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state: expected a mapping of name to array, got "
                            f"{type(state).__name__}")
        missing = [k for k in self._shapes if k not in state]
        unexpected = [k for k in state if k not in self._shapes]
        if _flag("strict", strict) and (missing or unexpected):
            raise ValueError(f"state: missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for name in self._shapes:
            if name not in state:
                continue
            a = _to_numpy(name, state[name])
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
            if a.shape != self._shapes[name]:
                raise ValueError(f"{name}: expected shape {self._shapes[name]}, got {a.shape}")
            new[name] = a
        for name, a in new.items():  # all checked first: a failed load changes nothing
            getattr(self, name)[...] = a  # in place: references from named_parameters() stay live

    # ---- forward / backward ----
    def _prepare(self, x: ArrayLike, hx: tuple[ArrayLike, ArrayLike] | None
                 ) -> tuple[np.ndarray, Array | None, Array | None, bool]:
        xa = _float_array("x", x, self.dtype, "the layer")
        unbatched = xa.ndim == 2
        if unbatched:
            xa = xa[:, None] if not self.batch_first else xa[None]
        elif xa.ndim != 3:
            raise ValueError(f"x: expected a 3-D array {self._xdesc()} or a 2-D unbatched "
                             f"[T, I], got a {xa.ndim}-D array of shape {xa.shape}")
        if xa.shape[2] != self.input_size:
            raise ValueError(f"x: expected {self.input_size} input features in the last axis, "
                             f"got shape {xa.shape}")
        B = xa.shape[0] if self.batch_first else xa.shape[1]
        h0 = c0 = None
        if hx is not None:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError("hx: expected a tuple (h0, c0)")
            want = (1, self.hidden_size) if unbatched else (1, B, self.hidden_size)
            st = []
            for nm, s in zip(("h0", "c0"), hx):
                sa = _float_array(nm, s, self.dtype, "the layer")
                if sa.shape != want:
                    raise ValueError(f"{nm}: expected shape [num_layers, "
                                     f"{'' if unbatched else 'B, '}H] = {want}, got {sa.shape}")
                st.append(sa.reshape(B, self.hidden_size))
            h0, c0 = st
        return xa, h0, c0, unbatched

    def _xdesc(self) -> str:
        return "[B, T, I]" if self.batch_first else "[T, B, I]"

    def _weights(self) -> tuple[Array, Array, Array | None, Array | None]:
        return (self.weight_ih_l0, self.weight_hh_l0, getattr(self, "bias_ih_l0", None),
                getattr(self, "bias_hh_l0", None))

    def _finish(self, y: Array, hn: Array, cn: Array, unbatched: bool) -> tuple[Array, State]:
        if unbatched:
            return (y[0] if self.batch_first else y[:, 0]), (hn, cn)
        return y, (hn[None], cn[None])

    def __call__(self, x: ArrayLike, hx: tuple[ArrayLike, ArrayLike] | None = None
                 ) -> tuple[Array, State]:
        """Inference forward: returns ``(y, (h_n, c_n))``."""
        xa, h0, c0, unbatched = self._prepare(x, hx)
        y, hn, cn = lstm(xa, *self._weights(), h0, c0, batch_first=self.batch_first)
        return self._finish(y, hn, cn, unbatched)

    forward = __call__

    def forward_train(self, x: ArrayLike, hx: tuple[ArrayLike, ArrayLike] | None = None
                      ) -> tuple[Array, State, Tape]:
        """Training forward: returns ``(y, (h_n, c_n), tape)`` for :meth:`backward`."""
        xa, h0, c0, unbatched = self._prepare(x, hx)
        y, hn, cn, tape = lstm_train(xa, *self._weights(), h0, c0, batch_first=self.batch_first)
        tape._unbatched = unbatched
        out, state = self._finish(y, hn, cn, unbatched)
        return out, state, tape

    def backward(self, tape: Tape, dy: ArrayLike | None, dh_n: ArrayLike | None = None,
                 dc_n: ArrayLike | None = None) -> tuple[Array, State, dict[str, Array]]:
        """Backward of :meth:`forward_train`.

        ``dy`` has ``y``'s shape; ``dh_n``, ``dc_n`` that of ``h_n``, ``c_n`` (or ``None``).
        Returns ``(dx, (dh0, dc0), grads)`` where ``grads`` maps each parameter name to its
        gradient.
        """
        _check_tape(tape, cell=False)
        c = tape._cache
        if c.batch_first != self.batch_first or c.I != self.input_size or c.H != self.hidden_size:
            raise ValueError("tape: it was not made by this layer's forward_train")
        unbatched = tape._unbatched
        if dy is not None:
            dya = _float_array("dy", dy, self.dtype, "the layer")
            want = y_shape = ((c.B, c.T, c.H) if self.batch_first else (c.T, c.B, c.H))
            if unbatched:
                want = (c.T, c.H)
            if dya.shape != want:
                raise ValueError(f"dy: expected the shape of y, {want}, got {dya.shape}")
            dy = dya.reshape(y_shape)
        sdesc = (1, c.H) if unbatched else (1, c.B, c.H)
        st = []
        for nm, s in (("dh_n", dh_n), ("dc_n", dc_n)):
            if s is None:
                st.append(None)
                continue
            sa = _float_array(nm, s, self.dtype, "the layer")
            if sa.shape != sdesc:
                raise ValueError(f"{nm}: expected the shape of {nm[1:]}, {sdesc}, got {sa.shape}")
            st.append(sa.reshape(c.B, c.H))
        g = lstm_backward(tape, dy, st[0], st[1])
        grads = {"weight_ih_l0": g.dw_ih, "weight_hh_l0": g.dw_hh}
        if self.bias:
            assert g.db_ih is not None and g.db_hh is not None
            grads.update(bias_ih_l0=g.db_ih, bias_hh_l0=g.db_hh)
        dx = g.dx.reshape((c.T, c.I)) if unbatched else g.dx
        if unbatched:
            return dx, (g.dh0, g.dc0), grads
        return dx, (g.dh0[None], g.dc0[None]), grads

    def __repr__(self) -> str:
        extra = "" if self.bias else ", bias=False"
        extra += ", batch_first=True" if self.batch_first else ""
        extra += ", dtype=float64" if self.dtype == np.float64 else ""
        return f"LSTM({self.input_size}, {self.hidden_size}{extra})"
