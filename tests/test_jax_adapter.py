"""lstmx.jax.lstm: values and gradients against a pure-JAX ``lax.scan`` LSTM written here, under
jit, grad and vmap, float32 and float64, with lengths, reverse and the deterministic variants;
clear errors for bad input."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import DTYPES, assert_close, make_case, require

T, B, I, H = 5, 4, 3, 6
ARGS = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")


@pytest.fixture(scope="module")
def jax() -> Any:
    return require("jax")


@pytest.fixture(scope="module")
def lj(jax: Any) -> Any:
    import lstmx.jax
    return lstmx.jax


@contextlib.contextmanager
def precision(jax: Any, dtype: Any) -> Iterator[None]:
    """float64 needs JAX's x64 mode; float32 runs without it."""
    enable_x64 = (jax if hasattr(jax, "enable_x64") else require("jax.experimental")).enable_x64
    with enable_x64(np.dtype(dtype) == np.float64):
        yield


def test_core_does_not_import_jax() -> None:
    code = "import sys, lstmx; assert 'jax' not in sys.modules, 'lstmx imported jax'"
    subprocess.run([sys.executable, "-c", code], check=True)


def ref_lstm(jax: Any, x: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None,
             h0: Any = None, c0: Any = None, *, batch_first: bool = False, lengths: Any = None,
             reverse: bool = False, w_hr: Any = None, peephole: Any = None,
             clip: float | None = None, input_forget: bool = False,
             layer_norm: Any = None) -> tuple[Any, tuple[Any, Any]]:
    """The oracle: docs/variants.md's pass in plain JAX (lax.scan over the steps)."""
    jnp = jax.numpy
    if batch_first:
        x = jnp.swapaxes(x, 0, 1)
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    R = H if w_hr is None else w_hr.shape[0]
    h0 = jnp.zeros((B, R), x.dtype) if h0 is None else h0
    c0 = jnp.zeros((B, H), x.dtype) if c0 is None else c0
    b = sum(v for v in (b_ih, b_hh) if v is not None)
    lens = jnp.full((B,), T) if lengths is None else jnp.asarray(lengths)
    s = jnp.arange(T)[:, None]
    active = s < lens  # [T, B]: step s of sequence b exists
    # the time index of step s: s, or len_b - 1 - s in reverse (padding stays in place); this
    # permutation of each column is its own inverse, so it also puts the outputs back
    t = jnp.where(active & reverse, lens - 1 - s, s)
    xs = jnp.take_along_axis(x, t[:, :, None], axis=0)

    def ln(v: Any) -> Any:
        m = v.mean(-1, keepdims=True)
        return (v - m) / jnp.sqrt(((v - m) ** 2).mean(-1, keepdims=True) + 1e-5)

    def cut(v: Any) -> Any:
        return v if clip is None else jnp.clip(v, -clip, clip)

    def step(carry: Any, inp: Any) -> Any:
        h, c = carry
        xt, on = inp
        zx, zh = xt @ w_ih.T, h @ w_hh.T
        if layer_norm is not None:
            zx, zh = ln(zx) * layer_norm[0], ln(zh) * layer_norm[1]
        zi, zf, zg, zo = jnp.split(zx + zh + b, 4, axis=-1)
        if peephole is not None:
            zi, zf = zi + peephole[0] * c, zf + peephole[1] * c
        i, g = jax.nn.sigmoid(cut(zi)), jnp.tanh(cut(zg))
        f = 1 - i if input_forget else jax.nn.sigmoid(cut(zf))
        cn = f * c + i * g
        if peephole is not None:
            zo = zo + peephole[2] * cn
        o = jax.nn.sigmoid(cut(zo))
        r = o * jnp.tanh(cn if layer_norm is None else ln(cn) * layer_norm[2] + layer_norm[3])
        hn = r if w_hr is None else r @ w_hr.T
        on = on[:, None]
        return (jnp.where(on, hn, h), jnp.where(on, cn, c)), jnp.where(on, hn, 0)

    (hn, cn), ys = jax.lax.scan(step, (h0, c0), (xs, active))
    y = jnp.take_along_axis(ys, t[:, :, None], axis=0)
    return (jnp.swapaxes(y, 0, 1) if batch_first else y), (hn, cn)


def loss_of(jax: Any, fn: Any, args: dict[str, Any], weights: tuple[Any, Any, Any],
            **kw: Any) -> Any:
    """A scalar that depends on every output: sum(y * wy) + sum(h_n * wh) + sum(c_n * wc)."""
    y, (hn, cn) = fn(**args, **kw)
    return (y * weights[0]).sum() + (hn * weights[1]).sum() + (cn * weights[2]).sum()


def check_against_ref(jax: Any, lj: Any, args: dict[str, Any], dtype: Any,
                      **kw: Any) -> None:
    """lstmx.jax.lstm and the oracle agree on y, h_n, c_n and on the gradients of a loss with
    respect to every float argument, both jit-compiled."""
    jnp = jax.numpy
    ours = jax.jit(lambda a: lj.lstm(**a, **kw))
    ref = jax.jit(lambda a: ref_lstm(jax, **a, **kw))
    out, expected = ours(args), ref(args)
    for what, g, e in zip(("y", "h_n", "c_n"), jax.tree.leaves(out), jax.tree.leaves(expected)):
        assert g.dtype == dtype, what
        assert_close(np.asarray(g), np.asarray(e), dtype, what)
    rng = np.random.default_rng(1)
    weights = tuple(jnp.asarray(rng.standard_normal(e.shape), dtype)
                    for e in jax.tree.leaves(expected))
    grad = jax.jit(jax.grad(lambda a, f: loss_of(jax, f, a, weights, **kw)),
                   static_argnums=1)
    got, want = grad(args, lj.lstm), grad(args, lambda **a: ref_lstm(jax, **a))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        assert g.dtype == dtype
        assert float(jnp.abs(e).max()) > 0, f"d{path}: the oracle's gradient is 0"
        assert_close(np.asarray(g), np.asarray(e), dtype, f"d{jax.tree_util.keystr(path)}")


CASES: dict[str, dict[str, Any]] = {
    "plain": dict(),
    "reverse": dict(reverse=True),
    "lengths": dict(lengths=[3, 5, 0, 1]),
    "lengths, reverse": dict(lengths=[2, 0, 5, 4], reverse=True),
    "batch_first, lengths, reverse": dict(batch_first=True, lengths=[5, 1, 3, 2], reverse=True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_values_and_gradients_match_lax_scan(jax: Any, lj: Any, dtype: Any, name: str) -> None:
    kw = dict(CASES[name])
    with precision(jax, dtype):
        case = make_case(T, B, I, H, dtype, seed=3, batch_first=kw.get("batch_first", False))
        args = {k: jax.numpy.asarray(v) for k, v in case.items()}
        if "lengths" in kw:
            kw["lengths"] = np.array(kw["lengths"])
        check_against_ref(jax, lj, args, dtype, **kw)


def variant_cases(jax: Any, dtype: Any) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Per name: (the arguments, gradients wanted for all; the keyword flags)."""
    jnp = jax.numpy
    rng = np.random.default_rng(4)

    def r(*shape: int, s: float = 0.5, loc: float = 0.0) -> Any:
        return jnp.asarray(rng.standard_normal(shape) * s + loc, dtype)

    case = {k: jnp.asarray(v) for k, v in make_case(T, B, I, H, dtype, seed=5).items()}
    P = 4
    proj = dict(case, w_hh=r(4 * H, P), h0=r(B, P), w_hr=r(P, H))
    ln = (r(4 * H, loc=1.0), r(4 * H, loc=1.0), r(H, loc=1.0), r(H))
    return {
        "peephole, clip": (dict(case, peephole=r(3, H)), dict(clip=0.8)),
        "input_forget": (case, dict(input_forget=True, lengths=np.array([4, 2, 5, 0]))),
        "w_hr (projection)": (proj, dict(reverse=True, lengths=np.array([1, 5, 3, 2]))),
        "layer_norm": (dict(case, layer_norm=ln), dict(reverse=True)),
        "everything": (dict(proj, peephole=r(3, H), layer_norm=ln),
                       dict(clip=1.5, lengths=np.array([5, 0, 2, 4]))),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["peephole, clip", "input_forget", "w_hr (projection)",
                                  "layer_norm", "everything"])
def test_variants_match_lax_scan(jax: Any, lj: Any, dtype: Any, name: str) -> None:
    with precision(jax, dtype):
        args, kw = variant_cases(jax, dtype)[name]
        if kw.get("input_forget"):  # the forget gate's weights get no gradient: compare it apart
            check_input_forget(jax, lj, args, dtype, kw)
        else:
            check_against_ref(jax, lj, args, dtype, **kw)


def check_input_forget(jax: Any, lj: Any, args: dict[str, Any], dtype: Any,
                       kw: dict[str, Any]) -> None:
    y, (hn, cn) = lj.lstm(**args, **kw)
    ey, (ehn, ecn) = ref_lstm(jax, **args, **kw)
    for what, g, e in (("y", y, ey), ("h_n", hn, ehn), ("c_n", cn, ecn)):
        assert_close(np.asarray(g), np.asarray(e), dtype, what)
    got = jax.jit(jax.grad(lambda a: lj.lstm(**a, **kw)[0].sum()))(args)
    want = jax.grad(lambda a: ref_lstm(jax, **a, **kw)[0].sum())(args)
    for k in args:
        assert_close(np.asarray(got[k]), np.asarray(want[k]), dtype, f"d{k}")
    assert not np.any(np.asarray(got["w_ih"][H:2 * H])), "the f rows get zero gradient"


def test_optional_arguments_absent(jax: Any, lj: Any) -> None:
    """No biases, no initial state: zeros; the gradients are only those of the given ones."""
    jnp = jax.numpy
    case = {k: jnp.asarray(v) for k, v in make_case(T, B, I, H, np.float32, seed=6).items()}
    args = {k: case[k] for k in ("x", "w_ih", "w_hh")}
    check_against_ref(jax, lj, args, np.float32, lengths=np.array([5, 2, 0, 3]))
    only_b = dict(args, b_hh=case["b_hh"], c0=case["c0"])
    check_against_ref(jax, lj, only_b, np.float32, reverse=True)


def test_traced_lengths_and_no_gradient_for_them(jax: Any, lj: Any) -> None:
    """lengths as an argument of the jitted function: a tracer, passed to the kernel call."""
    jnp = jax.numpy
    case = {k: jnp.asarray(v) for k, v in make_case(T, B, I, H, np.float32, seed=7).items()}
    f = jax.jit(lambda a, n: lj.lstm(**a, lengths=n, reverse=True)[0].sum())
    g = jax.jit(jax.grad(lambda a, n: lj.lstm(**a, lengths=n, reverse=True)[0].sum()))
    r = jax.grad(lambda a, n: ref_lstm(jax, **a, lengths=n, reverse=True)[0].sum())
    for lens in ([5, 1, 0, 3], [2, 2, 4, 5]):
        n = jnp.asarray(lens, jnp.int32)
        expected = ref_lstm(jax, **case, lengths=n, reverse=True)[0].sum()
        assert_close(np.asarray(f(case, n)), np.asarray(expected), np.float32, str(lens))
        got, want = g(case, n), r(case, n)
        for k in case:
            assert_close(np.asarray(got[k]), np.asarray(want[k]), np.float32, f"d{k} {lens}")
    dn = jax.grad(lambda a, n: lj.lstm(**a, lengths=n)[0].sum(), argnums=1,
                  allow_int=True)(case, jnp.asarray([5, 1, 0, 3]))
    assert dn.dtype == jax.dtypes.float0


def test_vmap_repeated_and_composed_grads(jax: Any, lj: Any) -> None:
    """vmap runs one kernel call per element; grads repeat and compose (no state is kept
    between forward and backward); second derivatives raise."""
    jnp = jax.numpy
    case = {k: jnp.asarray(v) for k, v in make_case(T, B, I, H, np.float32, seed=8).items()}
    xs = jnp.stack([case["x"], 2 * case["x"], -case["x"]])
    rest = {k: v for k, v in case.items() if k != "x"}
    out = jax.jit(jax.vmap(lambda x: lj.lstm(x, **rest)))(xs)
    for k in range(3):
        for g, e in zip(jax.tree.leaves(out), jax.tree.leaves(ref_lstm(jax, xs[k], **rest))):
            assert_close(np.asarray(g[k]), np.asarray(e), np.float32, f"vmap element {k}")
    dxs = jax.vmap(jax.grad(lambda x: lj.lstm(x, **rest)[1][1].sum()))(xs)
    for k in range(3):
        e = jax.grad(lambda x: ref_lstm(jax, x, **rest)[1][1].sum())(xs[k])
        assert_close(np.asarray(dxs[k]), np.asarray(e), np.float32, f"vmap grad {k}")

    def two_layers(f: Any, a: dict[str, Any]) -> Any:  # the second runs on the first's y
        y, (hn, cn) = f(**a)
        y2, _ = f(y[..., :I], a["w_ih"], a["w_hh"], h0=cn, c0=hn, reverse=True)
        return (y2 ** 2).sum()

    want = jax.grad(lambda a: two_layers(lambda *p, **k: ref_lstm(jax, *p, **k), a))(case)
    grad = jax.jit(jax.grad(lambda a: two_layers(lj.lstm, a)))
    for _ in range(2):
        got = grad(case)
        for k in case:
            assert_close(np.asarray(got[k]), np.asarray(want[k]), np.float32, f"d{k}")
    y, vjp = jax.vjp(lambda x: lj.lstm(x, **rest)[0], case["x"])
    dy = jnp.ones_like(y)
    np.testing.assert_array_equal(np.asarray(vjp(dy)[0]), np.asarray(vjp(dy)[0]))
    with pytest.raises(ValueError, match="Pure callbacks do not support JVP"):
        jax.grad(lambda w: jax.grad(lambda w: lj.lstm(case["x"], w, case["w_hh"])[0].sum())(w)
                 .sum())(case["w_ih"])


def test_bad_arguments_raise_clear_errors(jax: Any, lj: Any) -> None:
    jnp = jax.numpy
    a = {k: jnp.asarray(v) for k, v in make_case(T, B, I, H, np.float32, seed=9).items()}
    with pytest.raises(ValueError, match=r"w_ih: expected shape \[4H, I\]"):
        lj.lstm(a["x"], a["w_ih"][:, :2], a["w_hh"])
    with pytest.raises(ValueError, match=r"x: expected a 3-D array \[T, B, I\]"):
        lj.lstm(a["x"][0], a["w_ih"], a["w_hh"])
    with pytest.raises(ValueError, match=r"h0: expected shape \[B, H\]"):
        jax.jit(lambda h: lj.lstm(a["x"], a["w_ih"], a["w_hh"], h0=h))(a["h0"][:2])
    with pytest.raises(ValueError, match=r"layer_norm\[2\] \(gain_c\): expected shape \[H\]"):
        lj.lstm(a["x"], a["w_ih"], a["w_hh"], layer_norm=(a["b_ih"], a["b_hh"], a["b_ih"],
                                                           a["c0"][0]))
    with pytest.raises(TypeError, match="b_ih: expected float32 or float64 data, got dtype int32"):
        lj.lstm(a["x"], a["w_ih"], a["w_hh"], jnp.zeros(4 * H, jnp.int32))
    with pytest.raises(TypeError, match="c0: expected float32 or float64 data, got dtype float16"):
        lj.lstm(a["x"], a["w_ih"], a["w_hh"], c0=a["c0"].astype(jnp.float16))
    with precision(jax, np.float64), pytest.raises(
            TypeError, match="c0: dtype float64 does not match x's dtype float32"):
        lj.lstm(a["x"], a["w_ih"], a["w_hh"], c0=np.asarray(a["c0"], np.float64))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, T\] = \[0, 5\], got 6"):
        lj.lstm(a["x"], a["w_ih"], a["w_hh"], lengths=[1, 6, 2, 3])
    with pytest.raises(TypeError, match="lengths: expected integers"):
        jax.jit(lambda n: lj.lstm(a["x"], a["w_ih"], a["w_hh"], lengths=n))(jnp.ones(B))
    with pytest.raises(ValueError, match="clip: expected a positive threshold"):
        lj.lstm(a["x"], a["w_ih"], a["w_hh"], clip=-1.0)
    with pytest.raises(TypeError, match="reverse: expected a bool"):
        lj.lstm(a["x"], a["w_ih"], a["w_hh"], reverse="yes")
    # a traced lengths' values are known only when the kernel runs: the error comes from there
    with pytest.raises(Exception, match=r"lengths: expected values in \[0, T\]"):
        f = jax.jit(lambda n: lj.lstm(a["x"], a["w_ih"], a["w_hh"], lengths=n)[0])
        f(jnp.asarray([1, 9, 2, 3])).block_until_ready()
