"""oneDNN convolutions through XLA FFI (cnnjax/ops/onednn.py): values and both
gradients against XLA's convolution over the geometries models use, second order, vmap, what
stays XLA's, whole-model gradients, the compiled step holding no XLA convolution, and the
choice `train.conv='auto'` makes (with the reason when oneDNN cannot be had)."""

import os
import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.models import patch_conv, rewrite
from cnnjax.ops import onednn as O

needs_onednn = pytest.mark.skipif(
    not O.available()[0], reason=f"oneDNN convolutions unavailable here: {O.available()[1]}"
)
_NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="the onednn pip packages are x86-64 Linux only",
)
def test_available_where_the_project_installs_it():
    """On x86-64 Linux `./launch.sh` installs oneDNN from pip and builds the handler: it must
    be there (otherwise every test below would skip and CPU training would be slower)."""
    ok, why = O.available()
    assert ok, why


def _pair(seed, shape, kernel):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(shape), jnp.float32),
            jnp.asarray(rng.standard_normal(kernel), jnp.float32))  # fmt: skip


# (input NHWC, kernel HWIO, strides, padding, dilation, groups)
CASES = [
    ((2, 9, 7, 6), (3, 3, 6, 8), (2, 2), "SAME", (1, 1), 1),
    ((3, 10, 10, 8), (3, 3, 4, 8), (1, 1), "SAME", (2, 2), 2),
    ((2, 7, 7, 8), (5, 5, 1, 8), (2, 2), ((2, 1), (0, 3)), (1, 1), 8),  # depthwise, uneven
    ((2, 8, 8, 4), (1, 1, 4, 6), (1, 1), "VALID", (1, 1), 1),
    ((1, 5, 6, 3), (2, 2, 3, 4), (3, 2), ((1, 0), (0, 0)), (1, 1), 1),
    ((2, 12, 12, 16), (3, 3, 1, 16), (1, 1), "SAME", (3, 3), 16),  # atrous depthwise
    ((4, 11, 11, 3), (7, 7, 3, 5), (2, 2), ((3, 3), (3, 3)), (1, 1), 1),  # a stem
]


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-g{c[5]}")
def test_values_and_gradients_equal_xla(case):
    shape, kernel, strides, padding, dilation, groups = case
    x, w = _pair(0, shape, kernel)
    kw = dict(window_strides=strides, padding=padding, rhs_dilation=dilation,
              dimension_numbers=_NHWC, feature_group_count=groups)  # fmt: skip
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, **kw)))
    close = lambda a, b: np.testing.assert_allclose(  # float32 sums in another order
        a, b, rtol=1e-5, atol=2e-5 * float(jnp.abs(b).max())
    )
    ref = lax.conv_general_dilated(x, w, **kw)
    close(jax.jit(lambda x, w: O.conv_general_dilated(x, w, **kw))(x, w), ref)
    gx, gw = jax.jit(jax.grad(loss(O.conv_general_dilated), (0, 1)))(x, w)
    rx, rw = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    close(gx, rx)
    close(gw, rw)


@needs_onednn
def test_second_order_and_vmap():
    """Each op's gradient is written with the other two, so a gradient of a gradient (e.g. a
    gradient penalty) is XLA's too; vmap runs the custom calls per mapped element."""
    x, w = _pair(1, (2, 6, 6, 4), (3, 3, 2, 6))
    kw = dict(window_strides=(2, 1), padding="SAME", dimension_numbers=_NHWC,
              feature_group_count=2)  # fmt: skip

    def penalty(conv):
        inner = lambda x, w: jnp.sum(jnp.tanh(conv(x, w, **kw)))
        return lambda x, w: sum(jnp.sum(g**2) for g in jax.grad(inner, (0, 1))(x, w))

    got = jax.jit(jax.grad(penalty(O.conv_general_dilated), (0, 1)))(x, w)
    ref = jax.grad(penalty(lax.conv_general_dilated), (0, 1))(x, w)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    xs = jnp.stack([x, 2 * x, -x])
    mapped = jax.jit(jax.vmap(lambda x: O.conv_general_dilated(x, w, **kw)))(xs)
    for i in range(3):
        np.testing.assert_allclose(mapped[i], lax.conv_general_dilated(xs[i], w, **kw),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip


def _targets(fn, *args) -> str:
    return str(jax.make_jaxpr(fn)(*args))


@needs_onednn
def test_what_oneDNN_does_not_take_stays_xla():
    x, w = _pair(2, (2, 6, 6, 4), (3, 3, 4, 4))
    pads = ((1, 1), (1, 1))
    plain = lambda x, w, **k: O.conv_general_dilated(x, w, (1, 1), pads,
                                                    dimension_numbers=_NHWC, **k)  # fmt: skip
    assert O.FORWARD in _targets(plain, x, w)
    # bfloat16, input dilation (transposed convolutions), NCHW: XLA's own convolution
    bf = _targets(plain, x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    dilated = _targets(lambda x, w: plain(x, w, lhs_dilation=(2, 2)), x, w)
    nchw = _targets(lambda x, w: O.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")),
        x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1))  # fmt: skip
    for text in (bf, dilated, nchw):
        assert O.FORWARD not in text and "conv_general_dilated" in text
    np.testing.assert_allclose(
        plain(x, w, lhs_dilation=(2, 2)),
        lax.conv_general_dilated(x, w, (1, 1), pads, lhs_dilation=(2, 2),
                                 dimension_numbers=_NHWC),
        rtol=1e-6,
    )  # fmt: skip


def _cfg(conv, batch_norm="cnnjax"):
    return ml_collections.ConfigDict({"compute_dtype": "float32", "conv": conv,
                                      "batch_norm": batch_norm, "materialize": "auto",
                                      "depthwise": "auto"})  # fmt: skip


def _grads(model_name, cfg, image_size, train, n):
    model = rewrite.apply_to_model(models.create(model_name, num_classes=10), cfg)
    x = jax.random.normal(jax.random.key(0), (n, image_size, image_size, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    labels = jnp.arange(n) % 10

    def loss(params):
        out = model.apply({**variables, "params": params}, x, train=train,
                          mutable=["batch_stats"] if train else False)  # fmt: skip
        logits = out[0] if train else out
        logits = logits[0] if isinstance(logits, tuple) else logits
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(n), labels])

    step = jax.jit(jax.value_and_grad(loss))
    return step, variables["params"]


@needs_onednn
@pytest.mark.parametrize(
    "name,size,train,n",
    # Small maps and batches make training-mode gradients chaotic: at 16 px and batch 4 a
    # 1e-6 change of the input moves ResNet-20's first BatchNorm gradient by 0.3%; at 32 px
    # and batch 16 by 1e-6. MobileNet-V2 runs in inference mode (BatchNorm over 1x1 maps).
    [("resnet20_cifar", 32, True, 16), ("mobilenet_v2", 32, False, 4)],
)
def test_whole_model_gradients_equal_xla(name, size, train, n):
    """A residual net (training: oneDNN's convolutions and BatchNorm against XLA's
    convolutions and cnnjax's BatchNorm) and a depthwise net: the loss and every parameter
    gradient agree; the compiled step holds no XLA convolution."""
    step_o, params = _grads(name, _cfg("onednn", "onednn"), size, train, n)
    step_x, _ = _grads(name, _cfg("xla", "cnnjax"), size, train, n)
    (lo, go), (lx, gx) = step_o(params), step_x(params)
    np.testing.assert_allclose(lo, lx, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(go), jax.tree.leaves(gx),
                            strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5, err_msg=jax.tree_util.keystr(path))
    text = step_o.lower(params).compile().as_text()
    assert "convolution(" not in text  # every convolution is one of oneDNN's custom calls
    assert O.BACKWARD_DATA in text and O.BACKWARD_WEIGHTS in text
    assert (O.BN_BACKWARD in text) == train


@needs_onednn
@pytest.mark.parametrize("shape", [(8, 6, 6, 5), (3, 4, 7, 16), (64, 2, 2, 3)])
def test_batch_norm_equals_cnnjax_batch_norm(shape):
    """oneDNN's training BatchNorm: output, batch statistics and the three gradients equal
    cnnjax's (float32 rounding; oneDNN's variance is two-pass)."""
    from cnnjax.models import batch_norm as B

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 2, jnp.float32)
    scale, bias = (jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32) for _ in "ab")
    got = jax.jit(lambda *a: O.batch_norm_train(*a, 1e-3))(x, scale, bias)
    want = B.batch_norm_train(x, scale, bias, 1e-3, jnp.float32)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)
    g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    loss = lambda f: lambda x, s, b: jnp.sum(jnp.tanh(f(x, s, b)[0]) * g)
    ours = jax.jit(jax.grad(loss(lambda *a: O.batch_norm_train(*a, 1e-3)), (0, 1, 2)))(
        x, scale, bias
    )
    ref = jax.grad(loss(lambda *a: B.batch_norm_train(*a, 1e-3, jnp.float32)), (0, 1, 2))(
        x, scale, bias
    )
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


@needs_onednn
def test_batch_norm_module_uses_oneDNN_only_where_it_applies():
    """`BatchNorm(kernels='onednn')`: the same variables and (float32, training) the same
    values as cnnjax's; bfloat16 and evaluation stay on cnnjax's formulas; a bad name is an
    error naming it."""
    from cnnjax.models.batch_norm import BatchNorm

    x = jax.random.normal(jax.random.key(0), (4, 5, 5, 6)) * 2 + 1
    plain, fast = BatchNorm(), BatchNorm(kernels="onednn")
    v = plain.init(jax.random.key(1), x, use_running_average=False)
    assert jax.tree.structure(v) == jax.tree.structure(
        fast.init(jax.random.key(1), x, use_running_average=False)
    )
    run = lambda m, x, **k: m.apply(v, x, mutable=["batch_stats"], **k)
    (a, sa), (b, sb) = (
        run(fast, x, use_running_average=False),
        run(plain, x, use_running_average=False),
    )
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for p, q in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
    train = lambda m, x: jax.make_jaxpr(lambda x: run(m, x, use_running_average=False))(x)
    assert O.BN_FORWARD in str(train(fast, x))
    assert O.BN_FORWARD not in str(train(fast, x.astype(jnp.bfloat16)))
    assert O.BN_FORWARD not in str(jax.make_jaxpr(lambda x: fast.apply(
        v, x, use_running_average=True))(x))  # fmt: skip
    with pytest.raises(ValueError, match="BatchNorm kernels 'mkl' is not 'xla' or 'onednn'"):
        BatchNorm(kernels="mkl").init(jax.random.key(1), x, use_running_average=False)


def test_auto_and_explicit_choices():
    ok, _ = O.available()
    multi = jax.device_count() > 1
    assert patch_conv.resolve_conv("auto", "cpu") == ("onednn" if ok and not multi else "xla")
    assert patch_conv.resolve_conv("auto", "gpu") == "xla"
    assert patch_conv.resolve_conv("xla", "cpu") == "xla"
    with pytest.raises(ConfigError, match="train.conv='onednn' needs the CPU backend"):
        patch_conv.resolve_conv("onednn", "gpu")
    with pytest.raises(ConfigError, match=r"train.conv is 'cudnn'; expected one of"):
        patch_conv.resolve_conv("cudnn", "cpu")
    # with oneDNN's convolutions, depthwise ones are oneDNN's too and the barrier is off
    assert patch_conv.resolve_depthwise("auto", "cpu", "onednn") == "xla"
    assert patch_conv.resolve_depthwise("auto", "cpu", "xla") == "shifted"
    # BatchNorm follows: oneDNN's kernels where the convolutions are oneDNN's
    assert rewrite.resolve_batch_norm("auto", "cpu") == ("onednn" if ok and not multi else "cnnjax")
    assert rewrite.resolve_batch_norm("auto", "gpu") == "cnnjax"
    assert rewrite.resolve_batch_norm("flax", "cpu") == "flax"
    with pytest.raises(ConfigError, match="train.conv='onednn' needs the CPU backend"):
        rewrite.resolve_batch_norm("onednn", "gpu")
    with pytest.raises(ConfigError, match=r"train.batch_norm is 'ghost'; expected one of"):
        rewrite.resolve_batch_norm("ghost", "cpu")


def test_unavailable_says_why_and_auto_falls_back(tmp_path):
    """Without oneDNN (an empty $CNNJAX_ONEDNN_ROOT) 'auto' warns and trains with XLA's
    convolution; 'onednn' is an error naming what is missing; nothing is left built."""
    code = textwrap.dedent(
        """
        import logging
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        from cnnjax.errors import ConfigError
        from cnnjax.models import patch_conv
        from cnnjax.ops import onednn as onednn_conv
        ok, why = onednn_conv.available()
        print("WHY", why)
        assert not ok
        assert patch_conv.resolve_conv("auto", "cpu") == "xla"
        try:
            patch_conv.resolve_conv("onednn", "cpu")
        except ConfigError as e:
            print("ERROR", e)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "CNNJAX_FFI_DIR": str(tmp_path / "ffi"),
           O.ROOT_ENV: str(tmp_path / "empty")}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "WHY oneDNN not found" in out.stdout and "pip install onednn-cpu-gomp" in out.stdout
    assert "oneDNN convolutions are unavailable" in out.stderr
    assert "ERROR train.conv='onednn' but oneDNN is unavailable: oneDNN not found" in out.stdout
    assert not list((tmp_path / "ffi").rglob("*.so"))
