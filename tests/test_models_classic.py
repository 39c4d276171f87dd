"""Classic CNN families (LeNet, AlexNet, VGG, GoogLeNet, DenseNet, SqueezeNet) and their pooling.

Structure: exact torchvision parameter counts at 224 px and feature shapes, both via
jax.eval_shape (nothing is allocated). Numerics: PyTorch's pooling window arithmetic and the
AlexNet LRN against hand-computed values, and against torch when it is installed (logit
parity of whole models with torchvision lives in test_convert.py). Smoke: one jitted train
step per family.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.engine.state import create_state
from cnnjax.errors import ConfigError
from cnnjax.models.alexnet import local_response_norm
from cnnjax.ops.pooling import adaptive_avg_pool, adaptive_bins, max_pool
from tests.conftest import classification_eval, classification_step, image_inputs

# Test-only compile-time savers, neither of which changes what is traced or how jit caches
# it: the 'rbg' PRNG for parameter init (threefry's init graphs compile 2-3x slower on CPU)
# and XLA's O0 backend (GoogLeNet's train step compiles about 4x faster). The smoke runs keep
# AlexNet/VGG heads narrow (classifier_width=64): their 4096-wide heads, whose shapes the
# parameter counts already pin down, would spend most of the file's time updating 60-130M
# parameters.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _key(seed: int):
    return jax.random.key(seed, impl="rbg")


# torchvision weight metadata: parameters with num_classes=1000 (googlenet without aux heads).
TORCHVISION_PARAMS = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "googlenet": 6_624_904,
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
}
CLASSIC = sorted([*TORCHVISION_PARAMS, "lenet5"])


def _abstract(model, shape):
    """-> ((logits, features), variables) as ShapeDtypeStructs; nothing is computed."""
    x = jnp.zeros(shape, jnp.float32)
    return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))


def _count(params) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


# ---- Structure -------------------------------------------------------------------------------


def test_registry_has_every_classic_name():
    assert set(CLASSIC) <= set(models.names())


def test_lenet5_parameter_count_by_hand():
    # conv1 1*25*6+6=156, conv2 6*25*16+16=2416, fc1 400*120+120=48120, fc2 120*84+84=10164,
    # fc3 84*10+10=850.
    model = models.create("lenet5", num_classes=10)
    for size in (32, 28):  # 28 px is zero-padded to the 32 px framing: same count, same shapes
        (logits, feats), variables = _abstract(model, (2, size, size, 1))
        assert _count(variables["params"]) == 156 + 2416 + 48120 + 10164 + 850 == 61_706
        assert logits.shape == (2, 10)
        assert feats["stage1"].shape == (2, 28, 28, 6)
        assert feats["stage2"].shape == (2, 10, 10, 16)
        assert feats["pre_logits"].shape == (2, 84)


def test_googlenet_aux_heads_parameter_count_by_hand():
    # aux1: conv 512*128 + BN 2*128, fc1 2048*1024+1024, fc2 1024*1000+1000 = 3,188,968;
    # aux2 differs only in its 528 input channels: 3,191,016.
    _, variables = _abstract(
        models.create("googlenet", num_classes=1000, aux_logits=True), (1, 224, 224, 3)
    )
    assert _count(variables["params"]) == 6_624_904 + 3_188_968 + 3_191_016
    assert _count(variables["params"]["aux2"]) == 3_191_016


# Final feature map at 224 px (torchvision's documented shapes: 7x7x1024 before GoogLeNet's
# and DenseNet-121's pool, 13x13x512 before SqueezeNet's classifier, 13x13x256 = AlexNet conv5).
FINAL_224 = {
    "alexnet": ("stage3", (13, 13, 256)),
    "vgg16": ("stage5", (14, 14, 512)),
    "googlenet": ("stage4", (7, 7, 1024)),
    "densenet121": ("stage4", (7, 7, 1024)),
    "squeezenet1_0": ("stage3", (13, 13, 512)),
    "squeezenet1_1": ("stage3", (13, 13, 512)),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_matches_torchvision(name):
    model = models.create(name, num_classes=1000)
    (logits, feats), variables = _abstract(model, (1, 224, 224, 3))
    assert _count(variables["params"]) == TORCHVISION_PARAMS[name]
    assert logits.shape == (1, 1000) and logits.dtype == jnp.float32
    if name in FINAL_224:
        key, shape = FINAL_224[name]
        assert feats[key].shape == (1, *shape)


def _vgg(_):
    return {"stage1": (32, 32, 64), "stage2": (16, 16, 128), "stage3": (8, 8, 256),
            "stage4": (4, 4, 512), "stage5": (2, 2, 512), "pre_logits": (4096,)}  # fmt: skip


def _densenet(name):
    # channels: stem, blocks 1-4 (each block adds layers * growth; transitions halve)
    c0, c1, c2, c3, c4 = {
        "densenet121": (64, 256, 512, 1024, 1024),
        "densenet161": (96, 384, 768, 2112, 2208),
        "densenet169": (64, 256, 512, 1280, 1664),
        "densenet201": (64, 256, 512, 1792, 1920),
    }[name]
    return {"stem": (8, 8, c0), "stage1": (8, 8, c1), "stage2": (4, 4, c2),
            "stage3": (2, 2, c3), "stage4": (1, 1, c4), "pre_logits": (c4,)}  # fmt: skip


# Smallest sensible size per family and the feature shapes (less batch) it gives, by hand.
SMALL = {
    "lenet5": (32, 1, lambda _: {"stage1": (28, 28, 6), "stage2": (10, 10, 16),
                                 "pre_logits": (84,)}),
    "alexnet": (64, 3, lambda _: {"stage1": (15, 15, 64), "stage2": (7, 7, 192),
                                  "stage3": (3, 3, 256), "pre_logits": (4096,)}),
    "vgg": (32, 3, _vgg),
    "googlenet": (32, 3, lambda _: {"stem": (8, 8, 64), "stage1": (8, 8, 192),
                                    "stage2": (4, 4, 480), "stage3": (2, 2, 832),
                                    "stage4": (1, 1, 1024), "pre_logits": (1024,)}),
    "densenet": (32, 3, _densenet),
    "squeezenet1_0": (32, 3, lambda _: {"stem": (6, 6, 96), "stage1": (6, 6, 256),
                                        "stage2": (3, 3, 512), "stage3": (1, 1, 512),
                                        "pre_logits": (512,)}),
    "squeezenet1_1": (32, 3, lambda _: {"stem": (7, 7, 64), "stage1": (7, 7, 128),
                                        "stage2": (3, 3, 256), "stage3": (1, 1, 512),
                                        "pre_logits": (512,)}),
}  # fmt: skip


def _family(name):
    return next(k for k in SMALL if name.startswith(k))


@pytest.mark.parametrize("name", CLASSIC)
def test_output_and_feature_shapes_at_small_size(name):
    size, channels, expected = SMALL[_family(name)]
    (logits, feats), _ = _abstract(models.create(name, num_classes=7), (2, size, size, channels))
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    # The 'stride{s}' / VGG 'pool{k}' maps are checked for every family in test_backbones.py.
    named = {k: v.shape[1:] for k, v in feats.items() if not k.startswith(("stride", "pool"))}
    assert named == expected(name)


# One pixel under each family's smallest input (the same minimum as torchvision's twin).
TOO_SMALL = [
    ("alexnet", 62),
    ("vgg11", 31),
    ("lenet5", 15),
    ("googlenet", 14),
    ("densenet121", 28),
    ("squeezenet1_0", 20),
    ("squeezenet1_1", 16),
]


@pytest.mark.parametrize(("name", "size"), TOO_SMALL)
def test_too_small_images_get_a_clear_error(name, size):
    model = models.create(
        name, num_classes=10, **({"conv1_padding": 0} if name == "lenet5" else {})
    )
    with pytest.raises(ConfigError, match=f"{size}x{size}"):
        _abstract(model, (1, size, size, 3))
    (logits, _), _ = _abstract(model, (1, size + 1, size + 1, 3))  # the minimum itself works
    assert logits.shape == (1, 10)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [("lenet5", {"pool": "median"}, "median"), ("squeezenet1_0", {"version": "2_0"}, "2_0")],
)
def test_bad_fields_get_a_clear_error(name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _abstract(models.create(name, num_classes=10, **kwargs), (1, 32, 32, 3))


def test_googlenet_aux_heads_only_when_enabled_and_training():
    x = jnp.zeros((2, 32, 32, 3))
    dropout = {"dropout": jax.random.key(1)}
    for aux in (False, True):
        model = models.create("googlenet", num_classes=5, aux_logits=aux)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        assert ("aux1" in variables["params"]) == ("aux2" in variables["params"]) == aux
        train = lambda v, m=model: m.apply(v, x, train=True, mutable=["batch_stats"], rngs=dropout)
        (_, train_feats), _ = jax.eval_shape(train, variables)
        _, eval_feats = jax.eval_shape(model.apply, variables, x)
        assert ("aux_logits" in train_feats) == aux
        assert "aux_logits" not in eval_feats
        if aux:
            assert [a.shape for a in train_feats["aux_logits"]] == [(2, 5), (2, 5)]


def test_vgg_names_follow_torchvision_indices():
    _, v = _abstract(models.create("vgg11_bn", num_classes=10), (1, 32, 32, 3))
    # cfg A with BN: conv/BN/ReLU triples, pools after 64, 128, 256x2, 512x2, 512x2.
    convs = [0, 4, 8, 11, 15, 18, 22, 25]
    assert set(v["params"]) == {f"features_{i}" for i in convs} | {
        f"features_{i + 1}" for i in convs
    } | {"classifier_0", "classifier_3", "classifier_6"}
    assert v["params"]["classifier_0"]["kernel"].shape == (512 * 7 * 7, 4096)


def test_densenet_names_follow_torchvision():
    _, v = _abstract(models.create("densenet121", num_classes=10), (1, 32, 32, 3))
    p = v["params"]
    assert p["features_denseblock1"]["denselayer1"]["conv1"]["kernel"].shape == (1, 1, 64, 128)
    assert p["features_denseblock1"]["denselayer6"]["norm1"]["scale"].shape == (64 + 5 * 32,)
    assert p["features_transition3"]["conv"]["kernel"].shape == (1, 1, 1024, 512)
    assert p["features_norm5"]["scale"].shape == (1024,) and "classifier" in p
    assert len(p["features_denseblock4"]) == 16


# ---- Numerics --------------------------------------------------------------------------------


def test_adaptive_bins_pytorch_formula():
    # start = floor(i*H/out), end = ceil((i+1)*H/out)
    assert adaptive_bins(5, 3) == [(0, 2), (1, 4), (3, 5)]
    assert adaptive_bins(2, 3) == [(0, 1), (0, 2), (1, 2)]
    assert adaptive_bins(1, 7) == [(0, 1)] * 7
    assert adaptive_bins(14, 7) == [(2 * i, 2 * i + 2) for i in range(7)]


def test_adaptive_avg_pool_hand_values():
    col = jnp.arange(5.0).reshape(5, 1, 1)  # [H=5, W=1, C=1]
    np.testing.assert_allclose(adaptive_avg_pool(col, (3, 1))[:, 0, 0], [0.5, 2.0, 3.5])
    pair = jnp.array([2.0, 6.0]).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(adaptive_avg_pool(pair, (3, 1))[0, :, 0, 0], [2.0, 4.0, 6.0])
    one = jnp.full((2, 1, 1, 3), 1.5)
    np.testing.assert_array_equal(adaptive_avg_pool(one, 7), jnp.full((2, 7, 7, 3), 1.5))
    quad = jnp.arange(16.0).reshape(1, 4, 4, 1)  # divisible: plain 2x2 means
    np.testing.assert_allclose(adaptive_avg_pool(quad, 2)[0, ..., 0], [[2.5, 4.5], [10.5, 12.5]])


def _naive_adaptive(x, oh, ow):
    h, w = x.shape[-3:-1]
    out = np.zeros(x.shape[:-3] + (oh, ow, x.shape[-1]), np.float64)
    for i in range(oh):
        r0, r1 = math.floor(i * h / oh), math.ceil((i + 1) * h / oh)
        for j in range(ow):
            c0, c1 = math.floor(j * w / ow), math.ceil((j + 1) * w / ow)
            out[..., i, j, :] = x[..., r0:r1, c0:c1, :].mean(axis=(-3, -2))
    return out


@pytest.mark.parametrize(
    ("shape", "out"), [((2, 10, 7, 3), (3, 4)), ((5, 6, 2), 7), ((2, 3, 13, 13, 1), (6, 5))]
)
def test_adaptive_avg_pool_matches_a_direct_window_loop(shape, out):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    oh, ow = (out, out) if isinstance(out, int) else out
    got = adaptive_avg_pool(jnp.asarray(x), out)
    np.testing.assert_allclose(got, _naive_adaptive(x.astype(np.float64), oh, ow), atol=1e-6)


@pytest.mark.parametrize(("x", "out"), [(jnp.zeros((4, 4)), 2), (jnp.zeros((1, 4, 4, 1)), 0)])
def test_adaptive_avg_pool_rejects_bad_input(x, out):
    with pytest.raises(ValueError, match="adaptive_avg_pool"):
        adaptive_avg_pool(x, out)


def test_max_pool_ceil_mode_hand_values():
    x = jnp.arange(36.0).reshape(1, 6, 6, 1)  # x[r, c] = 6r + c
    # windows start at 0, 2, 4 (the last one hangs over the edge only in ceil mode)
    ceil = max_pool(x, 3, 2, ceil_mode=True)[0, ..., 0]
    np.testing.assert_array_equal(ceil, [[14, 16, 17], [26, 28, 29], [32, 34, 35]])
    np.testing.assert_array_equal(max_pool(x, 3, 2)[0, ..., 0], [[14, 16], [26, 28]])
    # PyTorch drops a last window that would start in the padding: 5 px, pad 1, 2/4 -> 2, not 3.
    y = jnp.arange(25.0).reshape(5, 5, 1)
    np.testing.assert_array_equal(max_pool(y, 2, 4, padding=1, ceil_mode=True)[..., 0],
                                  [[0, 4], [20, 24]])  # fmt: skip
    # A window larger than the input still yields one output in ceil mode (GoogLeNet at 15 px).
    one = jnp.full((1, 1, 1, 2), 5.0)
    np.testing.assert_array_equal(max_pool(one, 2, 2, ceil_mode=True), one)
    with pytest.raises(ValueError, match="no output for a 1x1 input"):
        max_pool(one, 2, 2)
    # Padding never wins: DenseNet's pool0 (3/2, pad 1) on negative values.
    neg = -1.0 - jnp.arange(25.0).reshape(1, 5, 5, 1)
    np.testing.assert_array_equal(max_pool(neg, 3, 2, padding=1)[0, ..., 0],
                                  [[-1, -2, -4], [-6, -7, -9], [-16, -17, -19]])  # fmt: skip


@pytest.mark.parametrize(("size", "floor", "ceil"), [(112, 55, 56), (14, 6, 7), (109, 54, 54)])
def test_max_pool_output_sizes(size, floor, ceil):
    x = jnp.zeros((1, size, size, 2), jnp.bfloat16)
    assert max_pool(x, 3, 2).shape == (1, floor, floor, 2)
    out = max_pool(x, 3, 2, ceil_mode=True)
    assert out.shape == (1, ceil, ceil, 2) and out.dtype == jnp.bfloat16


def test_max_pool_gradient_routes_to_the_window_maxima():
    x = jnp.arange(36.0).reshape(1, 6, 6, 1)
    g = jax.grad(lambda a: max_pool(a, 3, 2, ceil_mode=True).sum())(x)[0, ..., 0]
    expected = np.zeros((6, 6))
    expected[np.ix_([2, 4, 5], [2, 4, 5])] = 1.0
    np.testing.assert_array_equal(g, expected)


def test_pooling_and_lrn_match_torch():
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)
    for h, w in [(13, 13), (7, 10)]:
        x = rng.normal(size=(2, 3, h, w)).astype(np.float32)
        for out in [(7, 7), (6, 6), (3, 5)]:
            want = F.adaptive_avg_pool2d(torch.from_numpy(x), out).numpy()
            got = nchw(adaptive_avg_pool(jnp.asarray(x.transpose(0, 2, 3, 1)), out))
            np.testing.assert_allclose(got, want, atol=1e-6)
        for k, s, p in [(3, 2, 0), (3, 2, 1), (2, 4, 1)]:
            for ceil in (False, True):
                want = F.max_pool2d(torch.from_numpy(x), k, s, p, ceil_mode=ceil).numpy()
                got = nchw(max_pool(jnp.asarray(x.transpose(0, 2, 3, 1)), k, s, p, ceil))
                np.testing.assert_array_equal(got, want)
    x = rng.normal(size=(2, 10, 4, 4)).astype(np.float32)
    # torch divides alpha by the window size; the paper (and local_response_norm) does not.
    want = torch.nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)(torch.from_numpy(x))
    got = nchw(local_response_norm(jnp.asarray(x.transpose(0, 2, 3, 1))))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_local_response_norm_hand_values():
    x = jnp.array([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)  # n=5 covers all 3 channels: sum = 14
    np.testing.assert_allclose(
        local_response_norm(x)[0, 0, 0],
        np.array([1.0, 2.0, 3.0]) / (2 + 1e-4 * 14) ** 0.75,
        rtol=1e-6,
    )
    # Window = 2 channels either side, clipped at the ends; channel 0 (=10) reaches 1 and 2 only.
    y = jnp.ones((7,)).at[0].set(10.0)
    out = local_response_norm(y, alpha=1.0, beta=1.0, k=0.0)
    want = np.array([10 / 102, 1 / 103, 1 / 104, 1 / 5, 1 / 5, 1 / 4, 1 / 3])
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_alexnet_lrn_changes_outputs_not_parameters():
    x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    plain = models.create("alexnet", num_classes=10, classifier_width=32)
    lrn = models.create("alexnet", num_classes=10, classifier_width=32, lrn=True)
    assert jax.tree.structure(jax.eval_shape(lrn.init, _key(1), x)) == jax.tree.structure(
        jax.eval_shape(plain.init, _key(1), x)
    )

    def both(rng):
        variables = plain.init(rng, x)
        return plain.apply(variables, x)[0], lrn.apply(variables, x)[0]

    a, b = jax.jit(both, compiler_options=FAST_COMPILE)(_key(1))
    assert bool(jnp.all(jnp.isfinite(b))) and not np.allclose(a, b)


@pytest.mark.parametrize("name", ["alexnet", "vgg11"])
def test_classifier_width_sets_the_hidden_layers(name):
    (_, feats), v = _abstract(
        models.create(name, num_classes=10, classifier_width=32), (1, 64, 64, 3)
    )
    assert feats["pre_logits"].shape == (1, 32)
    assert v["params"]["classifier_6"]["kernel"].shape == (32, 10)


# ---- One jitted train step per family --------------------------------------------------------

# Every registry entry as it is trains in test_zoo_train.py; here, options that entries do not
# use (ReLU + max pool LeNet, AlexNet's LRN) and DenseNet, whose full-size entries are in its
# CI-only zoo_full stage, shortened to 2 layers per block.
SMOKE = {  # name: (image size, channels, extra kwargs)
    "lenet5": (28, 1, {"act": jax.nn.relu, "pool": "max"}),
    "alexnet": (64, 3, {"lrn": True, "classifier_width": 64}),
    "densenet121": (32, 3, {"block_config": (2, 2, 2, 2)}),
}


@pytest.mark.parametrize(
    "name",
    # DenseNet's step costs ~30 s even shortened: CI's second stage, with its full entries.
    [
        pytest.param(n, marks=[pytest.mark.zoo_full] if n == "densenet121" else [])
        for n in sorted(SMOKE)
    ],
)
def test_one_jitted_train_step(name):
    size, channels, kwargs = SMOKE[name]
    model = models.create(name, num_classes=4, **kwargs)
    tx = optax.sgd(0.01, 0.9)
    init = lambda r: create_state(model, tx, r, image_inputs((size, size, channels)))
    # Jitted like the trainer's init, so the first step already sees committed arrays.
    state = jax.jit(init, compiler_options=FAST_COMPILE)(_key(0))
    images = jax.random.normal(jax.random.key(1), (2, size, size, channels))
    batch = {"image": images, "label": jnp.array([0, 3]), "mask": jnp.ones((2,))}
    # A fresh partial: jax.jit shares one cache among wrappers of the same function object.
    step = jax.jit(classification_step(4), compiler_options=FAST_COMPILE)
    new_state, _ = step(state, batch)
    new_state, metrics = step(new_state, batch)
    assert step._cache_size() == 1
    assert int(new_state.step) == 2
    assert all(bool(jnp.isfinite(v)) for v in metrics.values()), metrics
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
    assert all(jax.tree.leaves(moved))
    stats_moved = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), state.batch_stats, new_state.batch_stats
    )
    assert all(jax.tree.leaves(stats_moved))  # every BN's running statistics were updated
    out = jax.jit(classification_eval(4), compiler_options=FAST_COMPILE)(new_state, batch)
    assert float(out["mask"].sum()) == 2 and bool(jnp.all(jnp.isfinite(out["loss"])))
