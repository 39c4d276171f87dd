"""Depthwise convolutions as shifted multiplies (cnnjax/ops/depthwise.py): values and both
gradients equal XLA's grouped convolution and a numpy loop for every stride, padding,
dilation and kernel size the models use; calls it does not cover pass through unchanged;
train.depthwise picks it per backend; a MobileNet's train-step gradients do not change."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from cnnjax import models
from cnnjax.models import patch_conv, rewrite
from cnnjax.ops import depthwise as D

DN = ("NHWC", "HWIO", "NHWC")


def _xla(x, w, strides, padding, dilation=(1, 1)):
    return lax.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=DN,
        feature_group_count=x.shape[-1],
    )  # fmt: skip


def _numpy(x, w, strides, pads, dilation):
    """Direct loops over output positions and taps (float64)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    (kh, kw), (sh, sw), (dh, dw) = w.shape[:2], strides, dilation
    ho = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for i, j, a, b in itertools.product(range(kh), range(kw), range(ho), range(wo)):
        out[:, a, b, :] += xp[:, a * sh + i * dh, b * sw + j * dw, :] * w[i, j, 0]
    return out


CASES = [
    # (input shape, kernel, strides, padding, dilation)
    ((2, 9, 11, 5), 3, (1, 1), "SAME", (1, 1)),
    ((2, 9, 11, 5), 3, (2, 2), ((0, 1), (0, 1)), (1, 1)),  # Keras' strided depthwise padding
    ((2, 10, 10, 6), 3, (2, 2), "SAME", (1, 1)),
    ((2, 13, 12, 4), 5, (2, 1), "SAME", (1, 1)),  # EfficientNet's 5x5
    ((1, 13, 12, 4), 5, (1, 1), ((2, 2), (2, 2)), (1, 1)),
    ((2, 13, 12, 4), 3, (1, 1), ((2, 2), (2, 2)), (2, 2)),  # dilated
    ((1, 8, 8, 3), 3, (1, 1), "VALID", (1, 1)),
    ((1, 7, 7, 3), 3, (3, 3), ((1, 0), (0, 1)), (1, 1)),  # uneven padding, stride 3
    ((1, 6, 6, 2), 1, (1, 1), "VALID", (1, 1)),  # 1x1
]


@pytest.mark.parametrize(("shape", "k", "strides", "padding", "dilation"), CASES)
def test_values_and_gradients_equal_xla_and_a_numpy_loop(shape, k, strides, padding, dilation):
    kx, kw, kg = jax.random.split(jax.random.key(sum(shape) + k), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (k, k, 1, shape[-1]))
    want = _xla(x, w, strides, padding, dilation)
    got = jax.jit(lambda x, w: D.depthwise_conv(x, w, strides, padding, dilation))(x, w)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    pads = D._pads(shape[1:3], (k, k), strides, padding, dilation)
    np.testing.assert_allclose(got, _numpy(x, w, strides, pads, dilation), rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, want.shape)
    loss = lambda f: lambda x, w: jnp.sum(f(x, w) * g)
    ours = jax.jit(jax.grad(loss(lambda x, w: D.depthwise_conv(x, w, strides, padding, dilation)),
                            argnums=(0, 1)))(x, w)  # fmt: skip
    theirs = jax.grad(loss(lambda x, w: _xla(x, w, strides, padding, dilation)), argnums=(0, 1))(
        x, w
    )
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_sums_in_float32_and_returns_bfloat16():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (3, 3, 1, 4)).astype(jnp.bfloat16)
    got = D.depthwise_conv(x, w, (1, 1), "SAME")
    assert got.dtype == jnp.bfloat16
    want = _xla(x.astype(jnp.float32), w.astype(jnp.float32), (1, 1), "SAME")
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2e-2, atol=5e-2)
    dx, dw = jax.grad(lambda x, w: jnp.sum(D.depthwise_conv(x, w, (1, 1), "SAME")), (0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    out = D.depthwise_conv(x, w, (1, 1), "SAME", preferred_element_type=jnp.float32)
    assert out.dtype == jnp.float32


def test_vmap_and_second_order():
    x = jax.random.normal(jax.random.key(2), (3, 2, 6, 6, 3))
    w = jax.random.normal(jax.random.key(3), (3, 3, 1, 3))
    got = jax.vmap(lambda xi: D.depthwise_conv(xi, w, (1, 1), "SAME"))(x)
    want = jax.vmap(lambda xi: _xla(xi, w, (1, 1), "SAME"))(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # a gradient of a gradient (e.g. a gradient penalty) goes through the custom backward
    f = lambda f_: lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(f_(x, w) ** 2))(x[0]) ** 2)
    np.testing.assert_allclose(
        jax.grad(f(lambda x, w: D.depthwise_conv(x, w, (1, 1), "SAME")))(w),
        jax.grad(f(lambda x, w: _xla(x, w, (1, 1), "SAME")))(w),
        rtol=1e-4,
    )


def test_only_plain_depthwise_calls_are_taken():
    x = jnp.ones((1, 6, 6, 4))
    dw = jnp.ones((3, 3, 1, 4))
    assert D.applies(x, dw, DN, None, 4, 1)
    assert not D.applies(x, jnp.ones((3, 3, 1, 8)), DN, None, 4, 1)  # channel multiplier 2
    assert not D.applies(x, jnp.ones((3, 3, 2, 4)), DN, None, 2, 1)  # grouped, 2 per group
    assert not D.applies(x, jnp.ones((3, 3, 4, 4)), DN, None, 1, 1)  # ordinary conv
    assert not D.applies(x, dw, DN, (2, 2), 4, 1)  # lhs dilation (a transposed conv)
    assert not D.applies(x, dw, ("NCHW", "OIHW", "NCHW"), None, 4, 1)
    assert not D.applies(
        jnp.ones((1, 6, 1)), jnp.ones((3, 1, 1)), ("NHC", "HIO", "NHC"), None, 1, 1
    )
    calls = []
    inner = lambda *a: calls.append(a) or lax.conv_general_dilated(*a)
    conv = D.shifted_depthwise(inner)
    mult = jnp.ones((3, 3, 1, 8))
    out = conv(x, mult, (1, 1), "SAME", None, None, DN, 4)
    assert out.shape == (1, 6, 6, 8) and len(calls) == 1  # passed through
    conv(x, dw, (1, 1), "SAME", None, None, DN, 4)
    assert len(calls) == 1  # computed by shifted multiplies


def test_no_output_positions_is_a_clear_error():
    with pytest.raises(ValueError, match="no output positions"):
        D.depthwise_conv(jnp.ones((1, 2, 2, 3)), jnp.ones((5, 5, 1, 3)), (1, 1), "VALID")


def _cfg(**kw):
    base = {"compute_dtype": "float32", "conv": "xla", "batch_norm": "cnnjax",
            "materialize": "off", "depthwise": "auto"}  # fmt: skip
    return ml_collections.ConfigDict({**base, **kw})


def test_train_depthwise_resolves_per_backend():
    assert patch_conv.resolve_depthwise("auto", "cpu") == "shifted"
    assert patch_conv.resolve_depthwise("auto", "gpu") == "xla"
    assert patch_conv.resolve_depthwise("shifted", "gpu") == "shifted"
    with pytest.raises(ValueError, match="'fft' is not one of"):
        patch_conv.resolve_depthwise("fft")
    model = models.create("mobilenet_v2", num_classes=10)
    for setting, shifted in (("auto", jax.default_backend() == "cpu"), ("shifted", True),
                             ("xla", False)):  # fmt: skip
        conv = rewrite.apply_to_model(model, _cfg(depthwise=setting)).conv
        assert patch_conv.is_conv_module(conv)
        fn = getattr(conv, "keywords", {}).get("conv_general_dilated")
        assert getattr(fn, "shifted_depthwise", False) == shifted, setting
    assert rewrite.apply_to_model(model, _cfg(depthwise="xla")).conv is nn.Conv


@pytest.mark.parametrize(
    "name,materialize",
    [
        ("mobilenet_v2", "off"),
        pytest.param("efficientnet_b0", "auto", marks=pytest.mark.zoo_full),  # CI's second stage
        pytest.param("shufflenet_v2_x0_5", "off", marks=pytest.mark.zoo_full),
    ],
)  # 'auto': the barrier around the other convolutions too, where it builds
def test_a_depthwise_net_trains_to_the_same_gradients(name, materialize):
    """The whole model's loss gradients with shifted depthwise convs equal XLA's (inference
    mode: BatchNorm over a batch of two 1x1 maps would amplify float rounding chaotically)."""
    model = models.create(name, num_classes=10)
    x = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
    y = jnp.array([3, 7])
    variables = jax.jit(lambda: model.init(jax.random.key(5), x, train=False))()

    def grads(m):
        def loss(params):
            logits, _ = m.apply({**variables, "params": params}, x, train=False)
            return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(2), y])

        return jax.jit(jax.value_and_grad(loss))(variables["params"])

    fast = rewrite.apply_to_model(model, _cfg(depthwise="shifted", materialize=materialize))
    slow = rewrite.apply_to_model(model, _cfg(depthwise="xla"))
    (lf, gf), (ls, gs) = grads(fast), grads(slow)
    np.testing.assert_allclose(lf, ls, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(gf), jax.tree.leaves(gs),
                            strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5, err_msg=jax.tree_util.keystr(path))


def test_with_the_recompute_barrier_around_the_other_convolutions():
    """conv_module('xla', materialize=True, depthwise='shifted'): the barrier wraps the
    ordinary convolutions, the depthwise ones go to the shifted multiplies; same gradients."""
    from cnnjax.runtime import materialize as M

    class Net(nn.Module):
        conv: object = nn.Conv

        @nn.compact
        def __call__(self, x):
            x = nn.relu(self.conv(8, (3, 3), padding="SAME", name="full")(x))
            x = nn.relu(self.conv(8, (3, 3), (2, 2), "SAME", feature_group_count=8, name="dw")(x))
            return jnp.sum(self.conv(4, (1, 1), name="pw")(x) ** 2)

    conv = patch_conv.conv_module("xla", materialize=M.available()[0], depthwise="shifted")
    x = jax.random.normal(jax.random.key(7), (2, 10, 10, 3))
    params = Net().init(jax.random.key(8), x)
    ga = jax.jit(jax.grad(lambda p: Net(conv=conv).apply(p, x)))(params)
    gb = jax.grad(lambda p: Net().apply(p, x))(params)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert patch_conv.conv_module("xla", M.available()[0], "shifted") is conv  # one object each
