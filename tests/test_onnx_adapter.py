"""lstmx.onnx: the ONNX LSTM operator, checked against onnxruntime (float32)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conftest import require
from test_reference import _onnx_lstm

import lstmx.onnx as lo

T, B, I, H = 5, 4, 3, 4
TOL = dict(rtol=1e-5, atol=1e-5)


def _feeds(D: int, seed: int = 0, lens: list[int] | None = None, initial: bool = False,
           peephole: bool = False, bias: bool = True) -> dict[str, np.ndarray]:
    """Random float32 ONNX inputs, only those asked for."""
    rng = np.random.default_rng(seed)

    def r(*shape: int, s: float = 0.5) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    feeds = dict(X=r(T, B, I, s=1.0), W=r(D, 4 * H, I), R=r(D, 4 * H, H))
    if bias:
        feeds["B"] = r(D, 8 * H)
    if lens is not None:
        feeds["sequence_lens"] = np.array(lens, np.int32)
    if initial:
        feeds.update(initial_h=r(D, B, H, s=1.0), initial_c=r(D, B, H, s=1.0))
    if peephole:
        feeds["P"] = r(D, 3 * H)
    return feeds


def _ort(feeds: dict[str, np.ndarray], D: int, attrs: dict[str, Any]) -> list[np.ndarray]:
    onnx, ort = require("onnx"), require("onnxruntime")
    sess = ort.InferenceSession(_onnx_lstm(onnx, feeds, H, D, attrs),
                                providers=["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


def _check(got: tuple[np.ndarray, ...], expected: list[np.ndarray]) -> None:
    for what, g, e in zip(("Y", "Y_h", "Y_c"), got, expected):
        assert g.dtype == np.float32, what
        np.testing.assert_allclose(g, e, **TOL, err_msg=what)


CASES: dict[str, dict[str, Any]] = {
    "forward": dict(),
    "reverse": dict(direction="reverse"),
    "bidirectional": dict(direction="bidirectional"),
    "no bias": dict(bias=False),
    "lengths, forward": dict(lens=[3, 0, 5, 1], initial=True),
    "lengths, reverse": dict(direction="reverse", lens=[2, 5, 0, 4], initial=True),
    "lengths, bidirectional": dict(direction="bidirectional", lens=[4, 1, 0, 5]),
    "initial states": dict(direction="bidirectional", initial=True),
    "peephole": dict(direction="bidirectional", peephole=True, initial=True),
    "clip": dict(clip=0.4, initial=True),
    "input_forget": dict(direction="reverse", input_forget=1, initial=True),
    "everything": dict(direction="bidirectional", lens=[5, 0, 2, 3], initial=True,
                       peephole=True, clip=0.6, input_forget=1),
}


def _split(case: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """num_directions, the _feeds arguments and the node's attributes of a case."""
    case = dict(case)
    feed_args = {k: case.pop(k) for k in ("lens", "initial", "peephole", "bias") if k in case}
    return 2 if case.get("direction") == "bidirectional" else 1, feed_args, case


@pytest.mark.parametrize("name", CASES)
def test_matches_onnxruntime(name: str) -> None:
    """Default activations (lstmx's kernels): directions, sequence_lens (unsorted, with 0),
    initial states, peepholes, clip, input_forget."""
    D, feed_args, attrs = _split(CASES[name])
    feeds = _feeds(D, seed=len(name), **feed_args)
    _check(lo.lstm(**feeds, **attrs), _ort(feeds, D, attrs))


# (f, g, h) and the alpha, beta lists (Affine, ThresholdedRelu, ScaledTanh: explicit, see
# lstmx.onnx on onnxruntime's defaults for them)
ACTIVATION_CASES: dict[str, dict[str, Any]] = {
    "Relu": dict(activations=["Sigmoid", "Relu", "Relu"]),
    "HardSigmoid, defaults": dict(activations=["HardSigmoid", "Tanh", "Tanh"]),
    "HardSigmoid": dict(activations=["HardSigmoid", "Tanh", "Tanh"],
                        activation_alpha=[0.3], activation_beta=[0.4]),
    "Affine": dict(activations=["Sigmoid", "Affine", "Affine"],
                   activation_alpha=[0.7, 1.2], activation_beta=[0.1, -0.2]),
    "LeakyRelu, defaults": dict(activations=["Sigmoid", "LeakyRelu", "LeakyRelu"]),
    "LeakyRelu": dict(activations=["Sigmoid", "LeakyRelu", "Tanh"], activation_alpha=[0.2]),
    "ThresholdedRelu": dict(activations=["Sigmoid", "ThresholdedRelu", "ThresholdedRelu"],
                            activation_alpha=[0.1, 0.3]),
    "ScaledTanh": dict(activations=["Sigmoid", "ScaledTanh", "ScaledTanh"],
                       activation_alpha=[1.5, 0.8], activation_beta=[0.5, 2.0]),
    "Elu, defaults": dict(activations=["Sigmoid", "Elu", "Elu"]),
    "Elu": dict(activations=["Sigmoid", "Tanh", "Elu"], activation_alpha=[0.5]),
    "Softsign": dict(activations=["Softsign", "Softsign", "Softsign"]),
    "Softplus": dict(activations=["Sigmoid", "Softplus", "Softsign"]),
    "bidirectional, mixed": dict(direction="bidirectional",
                                 activations=["Sigmoid", "Tanh", "Tanh",
                                              "HardSigmoid", "LeakyRelu", "Elu"],
                                 activation_alpha=[0.25, 0.05, 0.7], activation_beta=[0.45]),
    "everything": dict(direction="bidirectional", lens=[5, 0, 2, 3], initial=True, peephole=True,
                       clip=0.6, input_forget=1,
                       activations=["HardSigmoid", "Softsign", "Relu"] * 2),
    "reverse, lengths": dict(direction="reverse", lens=[1, 5, 3, 0], initial=True, clip=0.8,
                             activations=["Sigmoid", "Elu", "Softplus"]),
}


@pytest.mark.parametrize("name", ACTIVATION_CASES)
def test_activations_match_onnxruntime(name: str) -> None:
    """The general path (NumPy loop): every other activation, alone and with the variants."""
    D, feed_args, attrs = _split(ACTIVATION_CASES[name])
    feeds = _feeds(D, seed=len(name), **feed_args)
    _check(lo.lstm(**feeds, **attrs), _ort(feeds, D, attrs))


def test_general_path_equals_kernels() -> None:
    """The general path (forced by ScaledTanh, whose default alpha = beta = 1 make it tanh)
    equals the kernels' path, with every variant."""
    feeds = _feeds(2, seed=3, lens=[5, 0, 2, 3], initial=True, peephole=True)
    attrs: dict[str, Any] = dict(direction="bidirectional", clip=0.7, input_forget=1)
    fused = lo.lstm(**feeds, **attrs)
    general = lo.lstm(**feeds, **attrs, activations=["Sigmoid", "ScaledTanh", "ScaledTanh"] * 2)
    for a, b in zip(fused, general):
        np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("general", [False, True])
def test_layout_1(general: bool) -> None:
    """layout=1 is a pure permutation: batch-major X, states and outputs."""
    D = 2
    feeds = _feeds(D, seed=7, lens=[2, 5, 0, 3], initial=True, peephole=True)
    attrs: dict[str, Any] = dict(direction="bidirectional", clip=0.9)
    if general:
        attrs["activations"] = ["Sigmoid", "Softsign", "Tanh"] * 2
    y, yh, yc = _ort(feeds, D, attrs)
    batch_major = {**feeds, "X": feeds["X"].transpose(1, 0, 2),
                   "initial_h": feeds["initial_h"].transpose(1, 0, 2),
                   "initial_c": feeds["initial_c"].transpose(1, 0, 2)}
    _check(lo.lstm(**batch_major, **attrs, layout=1),
           [y.transpose(2, 0, 1, 3), yh.transpose(1, 0, 2), yc.transpose(1, 0, 2)])


def test_float64() -> None:
    """float64 in, float64 out, equal to the float32 results within float32's precision."""
    feeds = _feeds(1, seed=2, lens=[5, 1, 0, 3], initial=True)
    y32 = lo.lstm(**feeds)
    y64 = lo.lstm(**{k: v.astype(np.float64) if v.dtype == np.float32 else v
                     for k, v in feeds.items()})
    for a, b in zip(y32, y64):
        assert b.dtype == np.float64
        np.testing.assert_allclose(a, b, **TOL)


def _node(feeds: dict[str, Any], **attrs: Any) -> Any:
    helper = require("onnx").helper
    names = [n if n in feeds else "" for n in lo._INPUTS]
    return helper.make_node("LSTM", names, ["Y", "Y_h", "Y_c"], hidden_size=H, **attrs)


def test_run_node() -> None:
    """A NodeProto with a dict, and with a list (None for the absent inputs)."""
    feeds = _feeds(2, seed=4, lens=[3, 0, 5, 2], peephole=True)
    attrs: dict[str, Any] = dict(direction="bidirectional", clip=0.5,
                                 activations=["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Tanh",
                                              "Softsign"], activation_alpha=[0.3])
    expected = _ort(feeds, 2, attrs)
    node = _node(feeds, **attrs)
    _check(lo.run_node(node, feeds), expected)
    _check(lo.run_node(node, [feeds.get(n) for n in lo._INPUTS]), expected)


def test_run_model_with_initializers() -> None:
    """A ModelProto: weights as initialisers; X and the lengths given by name or in order."""
    onnx = require("onnx")
    feeds = _feeds(1, seed=5, lens=[4, 5, 0, 1], initial=True)
    attrs: dict[str, Any] = dict(direction="reverse", input_forget=1)
    expected = _ort(feeds, 1, attrs)
    model = onnx.load_from_string(_onnx_lstm(onnx, feeds, H, 1, attrs))
    weights = ("W", "R", "B", "initial_h", "initial_c")
    model.graph.initializer.extend(onnx.numpy_helper.from_array(feeds[n], n) for n in weights)
    kept = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    _check(lo.run_node(model, {"X": feeds["X"], "sequence_lens": feeds["sequence_lens"]}),
           expected)
    _check(lo.run_node(model, [feeds["X"], feeds["sequence_lens"]]), expected)


def test_run_node_errors() -> None:
    onnx = require("onnx")
    feeds = _feeds(1)
    node = _node(feeds)
    with pytest.raises(ValueError, match=r"^inputs: no array for the node's input R \('R'\)"):
        lo.run_node(node, {"X": feeds["X"], "W": feeds["W"]})
    with pytest.raises(ValueError, match=r"^node: expected an LSTM node, got op_type 'GRU'"):
        lo.run_node(onnx.helper.make_node("GRU", ["X", "W", "R"], ["Y"]), feeds)
    with pytest.raises(TypeError, match=r"^node: expected an onnx NodeProto or ModelProto"):
        lo.run_node("LSTM", feeds)
    with pytest.raises(TypeError, match=r"^inputs: expected a list or a dict"):
        lo.run_node(node, feeds["X"])
    with pytest.raises(ValueError, match=r"^inputs: expected at most 8 arrays"):
        lo.run_node(node, [feeds["X"]] * 9)
    bad = onnx.helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=H, foo=1)
    with pytest.raises(ValueError, match=r"^node: unknown LSTM attributes \['foo'\]"):
        lo.run_node(bad, feeds)
    empty = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    with pytest.raises(ValueError, match=r"^node: the model's graph has no LSTM node"):
        lo.run_node(empty, {})


@pytest.mark.parametrize("change,error,pattern", [
    (dict(direction="backward"), ValueError, r"^direction: expected one of forward, reverse"),
    (dict(layout=2), ValueError, r"^layout: expected 0 or 1, got 2"),
    (dict(hidden_size=5), ValueError, r"^hidden_size: 5 does not match R's shape"),
    (dict(clip=-1.0), ValueError, r"^clip: expected a positive threshold"),
    (dict(input_forget=2), TypeError, r"^input_forget: expected a bool"),
    (dict(activations=["Sigmoid", "Gelu", "Tanh"]), ValueError,
     r"^activations: unsupported activation 'Gelu'; supported: Sigmoid, Tanh"),
    (dict(activations=["Sigmoid", "Tanh"]), ValueError,
     r"^activations: expected 3 per direction \(f, g, h\) = 3 names, got 2"),
    (dict(activations="Tanh"), TypeError, r"^activations: expected a list of names"),
    (dict(activations=["Sigmoid", "Tanh", "Tanh"], activation_alpha=[0.1]), ValueError,
     r"^activation_alpha, activation_beta: 1 and 0 values left over"),
    (dict(X=np.zeros((T, B), np.float32)), ValueError, r"^X: expected 3 dimensions"),
    (dict(X=np.zeros((T, B, I), np.int32)), TypeError, r"^X: expected float32 or float64"),
    (dict(W=np.zeros((1, 4 * H, I + 1), np.float32)), ValueError,
     r"^W: expected shape \[num_directions, 4H, input_size\] = \(1, 16, 3\)"),
    (dict(R=np.zeros((2, 4 * H, H), np.float32)), ValueError,
     r"^R: expected shape \[num_directions, 4H, H\] with num_directions = 1"),
    (dict(B=np.zeros((1, 4 * H), np.float32)), ValueError, r"^B: expected shape"),
    (dict(B=np.zeros((1, 8 * H), np.float64)), TypeError, r"^B: dtype float64 does not match"),
    (dict(P=np.zeros((1, 4 * H), np.float32)), ValueError, r"^P: expected shape"),
    (dict(initial_h=np.zeros((1, B + 1, H), np.float32)), ValueError,
     r"^initial_h: expected shape \[num_directions, batch_size, H\]"),
    (dict(initial_c=np.zeros((1, B, H), np.float32), layout=1), ValueError,  # X: B = T = 5
     r"^initial_c: expected shape \[batch_size, num_directions, H\] = \(5, 1, 4\)"),
    (dict(sequence_lens=[1, 2, 3]), ValueError, r"^sequence_lens: expected shape \[B\]"),
    (dict(sequence_lens=[1, 2, 6, 0]), ValueError,
     r"^sequence_lens: expected values in \[0, T\] = \[0, 5\], got 6"),
    (dict(sequence_lens=[1.0, 2.0, 3.0, 4.0]), TypeError, r"^sequence_lens: expected integers"),
])
def test_bad_arguments(change: dict[str, Any], error: type, pattern: str) -> None:
    args: dict[str, Any] = {**_feeds(1), **change}
    with pytest.raises(error, match=pattern):
        lo.lstm(**args)


def test_core_does_not_import_onnx() -> None:
    """lstmx and lstmx.onnx load without the onnx package (imported inside run_node only)."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['onnx'] = None; import lstmx, lstmx.onnx; "
            "print(lstmx.onnx.lstm)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
