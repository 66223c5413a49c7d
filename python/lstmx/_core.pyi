"""Types of the private compiled module lstmx._core (cpp/bindings.cpp); use :mod:`lstmx`."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[Any]
_Floats = npt.NDArray[np.floating[Any]]

max_threads: int

class _Sized:  # stub-only: the properties that the caches and the packed weights all have
    @property
    def I(self) -> int: ...
    @property
    def H(self) -> int: ...
    @property
    def P(self) -> int: ...
    @property
    def nbytes(self) -> int: ...

class _Cache(_Sized):  # stub-only: the properties that Cache_f32 and Cache_f64 both have
    """Forward workspace kept for backward (one class per dtype)."""

    @property
    def T(self) -> int: ...
    @property
    def B(self) -> int: ...
    @property
    def R(self) -> int: ...
    @property
    def batch_first(self) -> bool: ...
    @property
    def y_stride(self) -> int: ...

class Cache_f32(_Cache):
    """The workspace of a float32 training forward pass."""

class Cache_f64(_Cache):
    """The workspace of a float64 training forward pass."""

class _Packed(_Sized):  # stub-only: the properties that Packed_f32 and Packed_f64 both have
    """Weights packed for the forward kernels (lstmx.h, Packed; one class per dtype)."""

    @property
    def isa(self) -> str: ...
    @property
    def half(self) -> bool: ...
    @property
    def int8(self) -> bool: ...

class Packed_f32(_Packed):
    """float32 weights, packed."""

class Packed_f64(_Packed):
    """float64 weights, packed."""

def pack(w_ih: _Array, w_hh: _Array, w_hr: _Array | None = None,
         half: bool = False, int8: bool = False) -> Packed_f32 | Packed_f64:
    """The weights packed by the active kernels, for ``forward(..., packed=)``; ``half``: also
    in float16 for ``step_plan`` (float32 weights that float16 holds exactly); ``int8``: W_ih
    and W_hh in int8 instead, for ``step_plan`` only (lstmx.h, Packed)."""
def forward(x: _Array, w_ih: _Array, w_hh: _Array, bias: _Array | None, h0: _Array | None,
            c0: _Array | None, batch_first: bool, training: bool, naive: bool = False, *,
            lengths: npt.NDArray[np.int64] | None = None, reverse: bool = False,
            w_hr: _Array | None = None, peephole: _Array | None = None, clip: float = 0.0,
            input_forget: bool = False, zoneout_h: float = 0.0, zoneout_c: float = 0.0,
            recurrent_dropout: float = 0.0, seed: int = 0, stream: int = 0,
            layer_norm: tuple[_Array, ...] | None = None, packed: _Packed | None = None,
            dots: bool = False, y_out: _Array | None = None, drop: _Array | None = None,
            y_drop: _Array | None = None,
            ) -> tuple[_Floats, _Floats, _Floats, Cache_f32 | Cache_f64 | None]:
    """``(y, h_n, c_n, cache)``; ``cache`` is ``None`` unless ``training``. With ``y_out``
    (rows equally spaced, e.g. a half of a wider array), y goes into it and is returned. With
    ``drop`` (training: a dropout mask laid out as y), ``y * drop`` also goes into ``y_drop``
    (laid out as y), and backward takes its ``dy`` as the gradient of ``y_drop``."""

# (dx, dh0, dc0, dw_ih, dw_hh, db, dpeephole, dw_hr, dlayer_norm)
_Grads = tuple[_Floats, _Floats, _Floats, _Floats, _Floats, _Floats, _Floats | None,
               _Floats | None, tuple[_Floats, _Floats, _Floats, _Floats] | None]

def backward(cache: _Cache, dy: _Array | None, dh_n: _Array | None,
             dc_n: _Array | None, naive: bool = False, *, dx_add: _Array | None = None
             ) -> _Grads:
    """Backpropagate through the forward pass that made ``cache`` (one overload per dtype)."""
def _activations(x: npt.ArrayLike) -> tuple[_Floats, _Floats]:
    """Test hook: the active kernels' vectorised ``(sigmoid(x), tanh(x))``, elementwise."""
class _StepPlan:  # stub-only: what StepPlan_f32 and StepPlan_f64 both have
    """A streaming step's checked layers and options (lstmx.h, lstm_step; one class per
    dtype)."""
    def run(self, x: _Array, h: _Array, c: _Array) -> tuple[_Floats, _Floats, _Floats]:
        """``x [B, I]``, ``h [L, B, R]``, ``c [L, B, H]`` -> ``(y [B, R], h_new, c_new)``."""
    def __call__(self, x: object, state: object, owner: dict[str, Any] | None
                 ) -> tuple[_Floats, Any] | None:
        """``(y, state_type(h_new, c_new))``, or None where an argument needs checking."""
class StepPlan_f32(_StepPlan):
    """A float32 step plan."""
class StepPlan_f64(_StepPlan):
    """A float64 step plan."""
def step_plan(layers: Sequence[tuple[Any, ...]], clip: float = 0.0, input_forget: bool = False,
              zoneout_h: float = 0.0, zoneout_c: float = 0.0, state_type: Any = None,
              names: tuple[str, ...] = (), params: tuple[Any, ...] = ()
              ) -> StepPlan_f32 | StepPlan_f64:
    """A streaming step's checked layers and options (lstmx.h, lstm_step); ``layers``: one
    ``(w_ih, w_hh, b_ih, b_hh, w_hr, peephole[, packed])`` per layer. Calls return None while
    ``owner`` (a dict) does not hold ``params`` under ``names``."""
def uniform(seed: int, stream: int, count: int) -> npt.NDArray[np.float64]:
    """The masks' hash (lstmx.h): uniform(seed, stream, idx) for idx < count, as float64."""
def set_num_threads(n: int) -> None:
    """Set the kernels' OpenMP thread count, ``1 <= n <= max_threads``."""
def get_num_threads() -> int:
    """The kernels' thread count."""
def set_isa(name: str) -> None:
    """Switch the kernels to another ISA level (see ``build_info()["isas_available"]``)."""
def build_info() -> dict[str, str | list[str] | bool]:
    """The ISA in use and those available, OpenMP, Eigen version, SIMD, compiler."""
