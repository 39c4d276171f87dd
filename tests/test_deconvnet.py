"""DeconvNet: the full-size parameter count against a formula (the paper's ~252M), shapes at
64 / 224 px and odd sizes, the decoder's use of the encoder's switches, speed rewrites and one
train step at a CPU-sized width (0.125) on 64 px, 11-class inputs."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.models.rewrite import apply_to_model
from cnnjax.ops.unpool import max_pool_with_switches, max_unpool

FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
SMALL = {"num_classes": 11, "width": 0.125}

# Noh et al. 2015, Table 1: conv widths of the VGG-16 encoder, the fc bottleneck and the
# mirrored decoder (kernel, output channels), in order.
ENCODER = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
DECODER = [512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64, 64]


def _compile(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST)


def _abstract(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda v: model.init_with_output(jax.random.key(0), v), x)


def _count(tree) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(tree))


def _formula(classes: int, cin: int = 3, width: float = 1.0) -> tuple[int, int]:
    """(weights + biases, BN scales + offsets) from the layer list: every conv is followed by
    BN (2 parameters per channel); the score layer has no BN."""
    w = lambda c: max(1, round(c * width))  # noqa: E731
    layers = [(3, c) for c in ENCODER] + [(7, 4096), (1, 4096), (7, 512)]
    layers += [(3, c) for c in DECODER]
    weights, bn = 0, 0
    for k, c in layers:
        weights += k * k * cin * w(c) + w(c)
        bn += 2 * w(c)
        cin = w(c)
    return weights + cin * classes + classes, bn


@pytest.fixture(scope="module")
def small_64():
    """(model, variables, images [2, 64, 64, 1]) at width 0.125, initialised once."""
    model = models.create("deconvnet", **SMALL)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 1))
    init = _compile(lambda k, v: model.init(k, v), jax.random.key(0), x)
    return model, init(jax.random.key(0), x), x


def test_registry_and_fields():
    assert "deconvnet" in models.names()
    assert {"num_classes", "width", "bottleneck_padding", "dtype", "conv", "norm"} <= (
        models.fields("deconvnet")
    )


def test_full_size_parameter_count_is_the_papers():
    (logits, _), variables = _abstract(models.create("deconvnet", num_classes=21), (1, 224, 224, 3))
    weights, bn = _formula(21)
    assert weights == 251_772_245 and round(weights / 1e6) == 252  # the paper's "252M"
    assert _count(variables["params"]) == weights + bn
    assert _count(variables["batch_stats"]) == bn  # a mean and a variance per BN channel
    assert logits.shape == (1, 224, 224, 21)


@pytest.mark.parametrize("width", [0.125, 0.5])
def test_width_scales_every_layer(width):
    (_, _), variables = _abstract(
        models.create("deconvnet", num_classes=11, width=width), (1, 64, 64, 1)
    )
    assert _count(variables["params"]) == sum(_formula(11, cin=1, width=width))
    assert variables["params"]["fc6"]["kernel"].shape == (
        7,
        7,
        round(512 * width),
        round(4096 * width),
    )


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_bottleneck_at_224_px(padding):
    model = models.create("deconvnet", num_classes=21, bottleneck_padding=padding)
    (logits, feats), _ = _abstract(model, (1, 224, 224, 3))
    side = 1 if padding == "VALID" else 7  # the paper's 7x7 -> 1x1 -> 7x7 bottleneck
    assert feats["fc7"].shape == (1, side, side, 4096)
    assert feats["fc6_deconv"].shape == (1, 7, 7, 512)
    assert logits.shape == (1, 224, 224, 21) and logits.dtype == jnp.float32


@pytest.mark.parametrize("shape", [(2, 64, 64, 1), (2, 64, 64, 3), (1, 72, 100, 3), (1, 33, 47, 1)])
def test_logits_at_input_resolution_for_any_size(shape):
    (logits, feats), _ = _abstract(models.create("deconvnet", **SMALL), shape)
    assert logits.shape == (*shape[:3], 11)
    assert feats["pool5"].shape[1:3] == (shape[1] // 32, shape[2] // 32)


def test_bad_configurations_raise_config_error():
    with pytest.raises(ConfigError, match="224x224"):
        _abstract(models.create("deconvnet", bottleneck_padding="VALID", **SMALL), (1, 64, 64, 1))
    with pytest.raises(ConfigError, match="bottleneck_padding"):
        _abstract(models.create("deconvnet", bottleneck_padding="same", **SMALL), (1, 64, 64, 1))
    with pytest.raises(ConfigError, match="width"):
        _abstract(models.create("deconvnet", num_classes=3, width=0.0), (1, 64, 64, 1))
    with pytest.raises(ConfigError, match="32x32"):
        _abstract(models.create("deconvnet", **SMALL), (1, 16, 64, 1))


def test_decoder_unpools_with_the_encoders_switches(small_64):
    model, variables, x = small_64
    _, feats = _compile(model.apply, variables, x)(variables, x)
    for stage, below in ((1, "deconv2"), (3, "deconv4"), (5, "fc6_deconv")):
        _, switches = max_pool_with_switches(feats[f"stage{stage}"])
        want = max_unpool(feats[below], switches, feats[f"stage{stage}"].shape)
        np.testing.assert_array_equal(feats[f"unpool{stage}"], want)
        # Exactly one position per 2x2 window can be non-zero.
        nonzero = np.asarray(feats[f"unpool{stage}"]) != 0
        b, h, w, c = nonzero.shape
        per_window = nonzero.reshape(b, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4))
        assert per_window.max() == 1 and nonzero.any()


def test_speed_rewrites_keep_the_parameter_tree():
    cfg = ml_collections.ConfigDict(
        {"compute_dtype": "bfloat16", "conv": "xla", "batch_norm": "cnnjax"}
    )
    model = models.create("deconvnet", **SMALL)
    fast = apply_to_model(model, cfg)
    (_, feats), variables = _abstract(model, (1, 64, 64, 3))
    (fast_logits, fast_feats), fast_variables = _abstract(fast, (1, 64, 64, 3))
    shapes = lambda t: jax.tree.map(lambda a: (a.shape, str(a.dtype)), t)  # noqa: E731
    assert shapes(fast_variables) == shapes(variables)
    assert fast_feats["deconv1"].dtype == jnp.bfloat16 and fast_logits.dtype == jnp.float32


def test_one_train_step_reaches_every_parameter(small_64):
    model, variables, x = small_64
    labels = jax.random.randint(jax.random.key(3), x.shape[:3], 0, 11)
    tx = optax.sgd(0.05)

    def loss_fn(params, stats):
        (logits, _), updates = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates["batch_stats"]

    def step(params, stats, opt_state):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, loss, grads

    params, stats = variables["params"], variables["batch_stats"]
    args = (params, stats, tx.init(params))
    new_params, new_stats, loss, grads = _compile(step, *args)(*args)
    assert np.isfinite(float(loss))
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g))]
    assert not dead, dead
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), stats, new_stats)
    assert all(jax.tree.leaves(moved))  # every BN layer updated its running statistics
    eval_loss = _compile(lambda p: loss_fn(p, stats)[0], params)
    assert float(eval_loss(new_params)) < float(eval_loss(params))
