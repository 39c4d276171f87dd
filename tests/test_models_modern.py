"""Pre-activation/SE ResNets, Xception, MobileNets, EfficientNets, ShuffleNets: exact parameter
counts, output and feature shapes, stochastic depth, numerics of the shared layers, and a
one-step jitted train smoke per family."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.engine.state import TrainState
from cnnjax.errors import ConfigError
from cnnjax.models.efficientnet import MBConv
from cnnjax.models.layers import SqueezeExcite, feature_name, make_divisible
from cnnjax.models.shufflenet import channel_shuffle
from tests.conftest import classification_step

# ---- Reference parameter counts, 1000 classes ------------------------------------------------
# torchvision weight metadata.
RESNET = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
TORCHVISION = {
    "mobilenet_v2": 3_504_872,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "shufflenet_v2_x2_0": 7_393_996,
}
# Xception paper / Keras trainable parameters (299 px); Keras MobileNet alpha 1.0 trainable.
XCEPTION = 22_855_952
MOBILENET_V1 = 4_231_976
# SENet paper: SE-ResNet-50 has 28.09M parameters (the canonical implementation 28,088,024).
SE_RESNET50_M = 28.09

# Pre-activation ResNets are not in torchvision; the counts below are derived by hand.
# A kxk conv from cin to cout has k*k*cin*cout weights (no bias); a BN has 2*C (scale, bias).
# preact_resnet18 (basic blocks, widths 64/128/256/512, 2 blocks per stage):
PREACT18 = (
    (7 * 7 * 3 * 64 + 2 * 64)  # stem conv1 + bn1 (its ReLU pre-activates layer1_0: no bn1 there)
    + (2 * 9 * 64 * 64 + 2 * 64)  # layer1_0: conv1, conv2, bn2
    + (2 * 9 * 64 * 64 + 2 * 64 + 2 * 64)  # layer1_1: conv1, conv2, bn1, bn2
    # layerX_0 of stages 2-4: bn1(cin), 3x3 cin->c, bn2(c), 3x3 c->c, bare 1x1 projection cin->c
    + sum(2 * ci + 9 * ci * c + 2 * c + 9 * c * c + ci * c
          for ci, c in ((64, 128), (128, 256), (256, 512)))
    + sum(2 * c + 9 * c * c + 2 * c + 9 * c * c for c in (128, 256, 512))  # layerX_1
    + 2 * 512  # final_bn
    + 512 * 1000 + 1000  # fc
)  # fmt: skip
# preact_resnet50 (bottlenecks of width w, output 4w, blocks 3/4/6/3):
#   first block of a stage: bn1(cin) + 1x1 cin->w + bn2(w) + 3x3 w->w + bn3(w) + 1x1 w->4w
#                           + bare 1x1 projection cin->4w   (layer1_0 has no bn1)
#   other blocks:           bn1(4w) + 4w*w + bn2(w) + 9w*w + bn3(w) + w*4w  = 17w^2 + 12w
_STAGES50 = ((64, 64, 3), (256, 128, 4), (512, 256, 6), (1024, 512, 3))  # (cin, w, blocks)
PREACT50 = (
    (7 * 7 * 3 * 64 + 2 * 64)  # stem
    + sum(2 * ci + ci * w + 2 * w + 9 * w * w + 2 * w + w * 4 * w + ci * 4 * w
          for ci, w, _ in _STAGES50)
    - 2 * 64  # layer1_0 has no bn1
    + sum((n - 1) * (17 * w * w + 12 * w) for _, w, n in _STAGES50)
    + 2 * 2048  # final_bn
    + 2048 * 1000 + 1000  # fc
)  # fmt: skip
# The per-stage BN moves cancel against final_bn, so a pre-activation ResNet has exactly the
# torchvision count minus the BNs of its projection shortcuts (which become bare convs).
DOWNSAMPLE_BN = {"basic": 2 * (128 + 256 + 512), "bottleneck": 2 * (256 + 512 + 1024 + 2048)}
# SE-ResNet-50 = ResNet-50 + one SE per bottleneck on C = 4w channels: fc1 C->C/16 + bias and
# fc2 C/16->C + bias, i.e. C^2/8 + C/16 + C, for 3/4/6/3 blocks at C = 256/512/1024/2048.
SE50 = RESNET[50] + sum(
    n * (c * c // 8 + c // 16 + c) for c, n in ((256, 3), (512, 4), (1024, 6), (2048, 3))
)

EXPECTED = {
    **TORCHVISION,
    **{f"preact_resnet{d}": RESNET[d] - DOWNSAMPLE_BN["basic"] for d in (18, 34)},
    **{f"preact_resnet{d}": RESNET[d] - DOWNSAMPLE_BN["bottleneck"] for d in (50, 101, 152)},
    "preact_resnet18": PREACT18,
    "preact_resnet50": PREACT50,
    "se_resnet50": SE50,
    "xception": XCEPTION,
    "mobilenet_v1": MOBILENET_V1,
}


def count_params(name, size=224, num_classes=1000, **kw):
    model = models.create(name, num_classes=num_classes, **kw)
    x = jnp.zeros((1, size, size, 3))
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(v["params"]))


def test_hand_derived_counts_agree_with_each_other():
    assert PREACT18 == RESNET[18] - DOWNSAMPLE_BN["basic"] == 11_687_720
    assert PREACT50 == RESNET[50] - DOWNSAMPLE_BN["bottleneck"] == 25_549_352
    assert SE50 == 28_088_024 and round(SE50 / 1e6, 2) == SE_RESNET50_M


@pytest.mark.parametrize("name,expected", sorted(EXPECTED.items()))
def test_param_count_is_exact(name, expected):
    assert count_params(name, 299 if name == "xception" else 224) == expected


def test_every_family_name_is_registered_and_counted():
    prefixes = ("preact_", "se_", "xception", "mobilenet", "efficientnet", "shufflenet")
    assert {n for n in models.names() if n.startswith(prefixes)} == set(EXPECTED)


# ---- Forward pass: logits and feature shapes (abstract evaluation, nothing compiled) ---------
# name -> (stem, stage1..stage4 spatial size at 64 px; their channels).
SHAPES_64 = {
    "preact_resnet18": ((16, 16, 8, 4, 2), (64, 64, 128, 256, 512)),
    "preact_resnet50": ((16, 16, 8, 4, 2), (64, 256, 512, 1024, 2048)),
    "se_resnet50": ((16, 16, 8, 4, 2), (64, 256, 512, 1024, 2048)),
    "xception": ((29, 15, 8, 4, 2), (64, 128, 256, 728, 2048)),
    "mobilenet_v1": ((32, 16, 8, 4, 2), (64, 128, 256, 512, 1024)),
    "mobilenet_v2": ((32, 16, 8, 4, 2), (16, 24, 32, 96, 1280)),
    "efficientnet_b0": ((32, 16, 8, 4, 2), (16, 24, 40, 112, 1280)),
    "shufflenet_v2_x1_0": ((32, 16, 8, 4, 2), (24, 24, 116, 232, 1024)),
}
FEATURES = ("stem", "stage1", "stage2", "stage3", "stage4")


def abstract_forward(model, x, train=False):
    """(logits, features) as ShapeDtypeStructs, for eval or train mode (batch_stats mutable)."""

    def run():
        variables = model.init(jax.random.key(0), x)
        kw = {"mutable": ["batch_stats"], "rngs": {"dropout": jax.random.key(1)}} if train else {}
        out = model.apply(variables, x, train=train, **kw)
        return out[0] if train else out

    return jax.eval_shape(run)


@pytest.mark.parametrize("name", sorted(SHAPES_64))
@pytest.mark.parametrize("train", [False, True])
def test_logits_and_feature_shapes(name, train):
    model = models.create(name, num_classes=7)
    logits, feats = abstract_forward(model, jnp.zeros((2, 64, 64, 3)), train)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    sizes, channels = SHAPES_64[name]
    strides = {f"stride{2**k}" for k in range(1, 6)}  # the last map at each stride
    assert set(feats) == {*FEATURES, *strides, "pre_logits"}
    for key, s, c in zip(FEATURES, sizes, channels, strict=True):
        assert feats[key].shape == (2, s, s, c), key
    assert feats["pre_logits"].shape == (2, channels[-1])


def test_width_multipliers_scale_channels():
    x = jnp.zeros((1, 64, 64, 3))
    for name, kw, width in [
        ("mobilenet_v1", {"alpha": 0.5}, 512),
        ("mobilenet_v2", {"width_mult": 0.5}, 1280),  # torchvision keeps 1280 below 1.0
        ("mobilenet_v2", {"width_mult": 1.4}, 1792),
    ]:
        _, feats = abstract_forward(models.create(name, num_classes=3, **kw), x)
        assert feats["pre_logits"].shape == (1, width), (name, kw)


def test_bad_options_raise_clear_errors():
    x = jnp.zeros((1, 64, 64, 3))
    with pytest.raises(ConfigError, match="alpha must be > 0, got 0"):
        abstract_forward(models.create("mobilenet_v1", num_classes=3, alpha=0.0), x)
    with pytest.raises(ConfigError, match="at least 32x32 px, got 16x16"):
        abstract_forward(models.create("xception", num_classes=3), x[:, :16, :16])
    with pytest.raises(ConfigError, match="stochastic_depth_prob must be in"):
        model = models.create("efficientnet_b0", num_classes=3, stochastic_depth_prob=1.5)
        abstract_forward(model, x)


# ---- Numerics on concrete values --------------------------------------------------------------
# XLA:CPU needs tens of seconds to compile flax's ~100 threefry initialisers on a busy 2-core
# machine, more than the train step itself, so concrete tests fill the variables on the host:
# kernels ~ N(0, 1 / fan_in), BN scale and running variance 1, every other leaf 0. The flax
# initialisers are still traced by the abstract tests above.
# Unoptimised XLA:CPU codegen compiles these steps 3-10x faster than the default (same HLO,
# measured on the busy 2-core machine); the tests check behaviour, not speed.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def host_variables(model, x, seed=0):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def test_channel_shuffle_interleaves_groups():
    x = np.arange(6.0).reshape(1, 1, 1, 6)
    np.testing.assert_array_equal(channel_shuffle(x, 2).ravel(), [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(channel_shuffle(x, 3).ravel(), [0, 2, 4, 1, 3, 5])
    # Shuffling by g and then by C / g restores the order.
    y = np.random.default_rng(0).normal(size=(2, 3, 3, 12))
    np.testing.assert_array_equal(channel_shuffle(channel_shuffle(y, 3), 4), y)
    with pytest.raises(ConfigError, match="5 channels"):
        channel_shuffle(np.zeros((1, 1, 1, 5)), 2)


def test_squeeze_excite_gates_channels():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 32))
    se = SqueezeExcite()  # ratio 1/16 -> 2 squeeze channels
    v = jax.eval_shape(lambda: se.init(jax.random.key(1), x))
    assert sum(p.size for p in jax.tree.leaves(v)) == 32 * 2 + 2 + 2 * 32 + 32
    # Zero weights and a fc2 bias of b give the gate sigmoid(b) on every channel.
    v = jax.tree.map(lambda p: jnp.zeros(p.shape), v)
    v["params"]["fc2"]["bias"] = jnp.full((32,), 2.0)
    np.testing.assert_allclose(
        jax.jit(se.apply, compiler_options=FAST)(v, x), x * jax.nn.sigmoid(2.0), rtol=1e-6
    )


def test_make_divisible_and_feature_names_match_torchvision_rules():
    assert [make_divisible(v) for v in (24, 17.6, 10, 1408, 35.2)] == [24, 16, 16, 1408, 32]
    names = [feature_name(s) for s in (1, 2, 4, 8, 16, 32)]
    assert names == ["stem", "stem", "stage1", "stage2", "stage3", "stage4"]


# ---- EfficientNet stochastic depth -----------------------------------------------------------


def test_mbconv_stochastic_depth_drops_whole_examples_only_in_training():
    conv = functools.partial(nn.Conv, use_bias=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=True)
    x = jax.random.normal(jax.random.key(0), (64, 4, 4, 8))

    def block(sd, train):
        m = MBConv(8, 6, 3, 1, sd, conv, norm, nn.silu)
        return m.apply(variables, x, train, rngs={"dropout": jax.random.key(3)})

    variables = host_variables(MBConv(8, 6, 3, 1, 0.0, conv, norm, nn.silu), x)
    run = jax.jit(
        lambda: (block(1.0, True), block(1.0, False), block(0.5, True)), compiler_options=FAST
    )
    dropped_all, eval_out, half = run()
    np.testing.assert_array_equal(dropped_all, x)  # p = 1: the block is the identity in training
    assert not np.allclose(eval_out, x)  # ... and the full residual block at eval
    # p = 0.5: each example either skips the branch (== x) or gets it scaled by 1 / (1 - p).
    skipped = np.all(np.isclose(half, x), axis=(1, 2, 3))
    kept = np.all(np.isclose(half - x, 2 * (eval_out - x), atol=1e-5), axis=(1, 2, 3))
    assert np.all(skipped ^ kept) and 16 < skipped.sum() < 48


def test_efficientnet_b0_stochastic_depth_schedule():
    model = models.create("efficientnet_b0", num_classes=5)
    seen = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dropout) and context.module.name == "stochastic_depth":
            m = context.module
            seen[(m.scope.path[0], m.deterministic)] = m.rate
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        for train in (False, True):
            abstract_forward(model, jnp.zeros((2, 32, 32, 3)), train)
    # torchvision: p = 0.2 * block_id / 16 over the 16 MBConvs, applied on the 9 residual ones;
    # deterministic (inactive) at eval, active in training.
    residual = {"features_2_1": 2, "features_3_1": 4, "features_4_1": 6, "features_4_2": 7}
    residual |= {"features_5_1": 9, "features_5_2": 10, "features_6_1": 12, "features_6_2": 13}
    residual |= {"features_6_3": 14}
    expected = {(k, not train): 0.2 * i / 16 for k, i in residual.items() for train in (0, 1)}
    assert seen == pytest.approx(expected)


# ---- One jitted train step per family ---------------------------------------------------------
# Every registry entry as it is trains in test_zoo_train.py (EfficientNets in its CI-only
# zoo_full stage); here, EfficientNet shortened, with a custom block table and a higher
# stochastic depth, and the eval forward after training.
SMOKE = {
    "efficientnet_b0": {
        "inverted_residual_setting": ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2)),
        "stochastic_depth_prob": 0.5,
    },
}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_one_jitted_train_step(name):
    """Shortened members of each family: two jitted train steps, one compile, every parameter
    and some BN statistics move; then the eval forward is finite and pools its last map."""
    model = models.create(name, num_classes=4, **SMOKE[name])
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = host_variables(model, x)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=optax.sgd(0.05, 0.9),
        rng=jax.random.PRNGKey(0),
    )
    # Committed device arrays (as the trainer's jitted init gives), so that the first call sees
    # the same argument signature as the second (a Python-int `step` would not).
    state = jax.device_put(state, jax.devices()[0])
    batch = {"image": x, "label": jnp.array([0, 3]), "mask": jnp.ones((2,), jnp.float32)}
    # A fresh function object: jit's cache is shared by every jax.jit of the same function.
    step = jax.jit(classification_step(4), compiler_options=FAST)
    new_state, metrics = step(state, batch)
    new_state, metrics = step(new_state, batch)
    assert step._cache_size() == 1
    assert int(new_state.step) == 2
    assert all(bool(jnp.isfinite(v)) for v in metrics.values()), metrics
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
    assert all(jax.tree.leaves(moved))
    stats = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), state.batch_stats, new_state.batch_stats
    )
    assert all(jax.tree.leaves(stats))

    new_vars = {"params": new_state.params, "batch_stats": new_state.batch_stats}
    logits, feats = jax.jit(model.apply, compiler_options=FAST)(new_vars, x)
    assert logits.shape == (2, 4)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in (logits, *feats.values()))
    last = feats[max(k for k in feats if k.startswith("stage"))]
    np.testing.assert_allclose(feats["pre_logits"], last.mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)


def test_xception_too_small_is_a_clear_config_error():
    model = models.create("xception", num_classes=10)
    x = jnp.zeros((1, 31, 31, 3))
    with pytest.raises(ConfigError, match="Xception needs images of at least 32x32 px, got 31x31"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), x))
