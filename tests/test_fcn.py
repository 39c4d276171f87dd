"""FCN-32s / 16s / 8s: structure (shapes at 64 / 224 px, parameter counts from the layer shapes),
bilinear initialisation, the skip fusion, VGG classifier conversion, speed rewrites, a train step.

Shapes and counts use jax.eval_shape (nothing is allocated). Computing tests use VGG-11 with a
narrow fc6/fc7 and XLA's O0 backend (compile time dominates on CPU); the conversion test runs
the real VGG-16 (138M parameters, host-filled) once at 224 px.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.models.patch_conv import conv_for_backend
from cnnjax.models.rewrite import apply_to_model, resolve_materialize
from cnnjax.models.segmentation import fcn
from cnnjax.models.vgg import CONFIGS, M
from cnnjax.ops import upsample

FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
VARIANTS = ("fcn32s", "fcn16s", "fcn8s")


def _compile(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST)


def _abstract(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda v: model.init_with_output(jax.random.key(0), v), x)


def _count(tree) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(tree))


def _shapes(tree):
    return jax.tree.map(lambda a: (a.shape, str(a.dtype)), tree)


def _host_fill(abstract, seed=0):
    """Random variables for an abstract tree without compiling an init: He-scaled kernels,
    non-zero biases (so a mis-mapped bias shows), BN statistics away from 0 / 1."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            fan_in = math.prod(shape[:-1])
            return (rng.standard_normal(shape, np.float32) * math.sqrt(2 / fan_in)).astype(
                leaf.dtype
            )
        if name == "var":
            return rng.uniform(0.5, 1.5, shape).astype(leaf.dtype)
        base = 1.0 if name == "scale" else 0.0
        return (base + 0.1 * rng.standard_normal(shape, np.float32)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _small(name="fcn8s", **kw):
    return models.create(name, **{"num_classes": 11, "backbone": "vgg11", "fc_width": 16, **kw})


@pytest.fixture(scope="module")
def fcn8s_64():
    """(model, variables, images [2, 64, 64, 1]) of a small FCN-8s, initialised once."""
    model = _small()
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 1))
    init = _compile(lambda k, v: model.init(k, v), jax.random.key(0), x)
    return model, init(jax.random.key(0), x), x


# ---- Structure -------------------------------------------------------------------------------


def test_registry_names_and_fields():
    assert set(VARIANTS) <= set(models.names())
    for name in VARIANTS:
        assert {"num_classes", "backbone", "fc_width", "dtype", "conv", "norm"} <= models.fields(
            name
        )


def _vgg16_convs() -> int:
    widths, cin, total = [c for c in CONFIGS[16] if c != M], 3, 0
    for c in widths:
        total, cin = total + 9 * cin * c + c, c
    return total


def _fcn_vgg16_params(skips, k=21, fc=4096) -> int:
    """Layer shapes: VGG-16 convs, fc6 7x7x512xfc, fc7 1x1, score 1x1 layers, bias-free
    bilinear transposed convs of size 2f - f % 2 over k channels."""
    total = _vgg16_convs() + (49 * 512 * fc + fc) + (fc * fc + fc) + (fc * k + k)
    skip_channels = {16: 512, 8: 256}
    stride = 32
    for s in skips:
        total += 4 * 4 * k * k + skip_channels[s] * k + k  # 2x upsampling + score_pool
        stride = s
    kernel = 2 * stride
    return total + kernel * kernel * k * k


@pytest.mark.parametrize("name, skips", [("fcn32s", ()), ("fcn16s", (16,)), ("fcn8s", (16, 8))])
def test_parameter_counts_from_layer_shapes(name, skips):
    (_, _), variables = _abstract(models.create(name, num_classes=21), (1, 224, 224, 3))
    assert _count(variables["params"]) == _fcn_vgg16_params(skips)
    assert "batch_stats" not in variables


def test_fcn8s_vgg16_parameter_count():
    # The paper's Table 1 gives 134M for FCN-VGG16: VGG-16's 138.36M less its 1000-way
    # classifier (4.10M), plus 21-class score / skip layers and upsampling kernels (0.23M).
    (_, _), variables = _abstract(models.create("fcn8s", num_classes=21), (1, 224, 224, 3))
    assert _count(variables["params"]) == 134_489_759 == _fcn_vgg16_params((16, 8))


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("size, channels", [(64, 1), (64, 3), (224, 3), (224, 1)])
def test_logits_at_input_resolution(name, size, channels):
    model = models.create(name, num_classes=11)
    (logits, feats), variables = _abstract(model, (2, size, size, channels))
    assert logits.shape == (2, size, size, 11) and logits.dtype == jnp.float32
    assert feats["fc7"].shape == (2, size // 32, size // 32, 4096)
    assert feats["score_fr"].shape == (2, size // 32, size // 32, 11)
    if name != "fcn32s":
        assert feats["fuse_pool4"].shape == (2, size // 16, size // 16, 11)
    if name == "fcn8s":
        assert feats["fuse_pool3"].shape == (2, size // 8, size // 8, 11)
    assert variables["params"]["backbone"]["features_0"]["kernel"].shape == (3, 3, channels, 64)


def test_layer_names_follow_caffe():
    names = {n: set(_abstract(_small(n), (1, 64, 64, 1))[1]["params"]) for n in VARIANTS}
    base = {"backbone", "fc6", "fc7", "score_fr"}
    assert names["fcn32s"] == base | {"upscore"}
    assert names["fcn16s"] == base | {"upscore2", "score_pool4", "upscore16"}
    assert names["fcn8s"] == base | {
        "upscore2",
        "score_pool4",
        "upscore_pool4",
        "score_pool3",
        "upscore8",
    }


def test_other_backbones_use_stride_maps_and_ceil_sizes_crop():
    model = models.create("fcn8s", num_classes=5, backbone="resnet18", fc_width=32)
    (logits, feats), variables = _abstract(model, (1, 100, 100, 3))
    assert logits.shape == (1, 100, 100, 5)  # 4x4 at stride 32, upsampled 128 and cropped
    assert variables["params"]["fc6"]["kernel"].shape == (3, 3, 512, 32)
    assert variables["params"]["score_pool3"]["kernel"].shape == (1, 1, 128, 5)
    (logits, _), variables = _abstract(
        models.create("fcn32s", num_classes=5, backbone="resnet18", fc_width=0), (1, 64, 64, 3)
    )
    assert logits.shape == (1, 64, 64, 5) and "fc6" not in variables["params"]


def test_bad_configurations_raise_config_error():
    with pytest.raises(ConfigError, match=r"80x80 input.*divisible by 32"):
        _abstract(models.create("fcn8s", num_classes=3), (1, 80, 80, 3))
    with pytest.raises(ConfigError, match="divisible by 32"):
        _abstract(models.create("fcn32s", num_classes=3), (1, 96, 100, 3))
    with pytest.raises(ConfigError, match="skips"):
        _abstract(models.create("fcn8s", num_classes=3, skips=(8, 16)), (1, 64, 64, 3))
    with pytest.raises(ConfigError, match="num_classes"):
        _abstract(models.create("fcn8s", num_classes=0), (1, 64, 64, 3))
    (logits, _), _ = _abstract(models.create("fcn8s", num_classes=3, fc_width=8), (1, 96, 128, 3))
    assert logits.shape == (1, 96, 128, 3)


# ---- Initialisation and skips ---------------------------------------------------------------


def test_upsampling_kernels_start_bilinear(fcn8s_64):
    _, variables, _ = fcn8s_64
    params = variables["params"]
    for name, factor in (("upscore2", 2), ("upscore_pool4", 2), ("upscore8", 8)):
        np.testing.assert_array_equal(
            params[name]["kernel"], upsample.bilinear_kernel(factor, 11), err_msg=name
        )
    assert not np.any(params["score_pool4"]["kernel"]) and not np.any(
        params["score_pool3"]["kernel"]
    )


def _interior(a, margin):
    return a[:, margin:-margin, margin:-margin]


def _close_interior(got, want, margin):
    """got == want away from the border, to float32 precision relative to want's scale."""
    got, want = np.asarray(_interior(got, margin)), np.asarray(_interior(want, margin))
    scale = np.abs(want).max()
    assert scale > 1e-6  # not a trivially zero comparison
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


def test_fcn8s_at_init_upsamples_its_scores_bilinearly(fcn8s_64):
    model, variables, x = fcn8s_64
    (logits, feats) = _compile(model.apply, variables, x)(variables, x)
    # score_pool* start at zero, so each fusion is the bilinear 2x of the coarser scores plus
    # the skip's bias (zero); away from the border the transposed convs equal bilinear().
    _close_interior(feats["fuse_pool4"], upsample.bilinear(feats["score_fr"], factor=2), 1)
    _close_interior(feats["fuse_pool3"], upsample.bilinear(feats["fuse_pool4"], factor=2), 1)
    _close_interior(logits, upsample.bilinear(feats["fuse_pool3"], size=(64, 64)), 4)


def test_fcn32s_at_init_is_bilinear_32x():
    model = _small("fcn32s")
    x = jax.random.normal(jax.random.key(2), (1, 96, 96, 3))
    variables = _compile(lambda k, v: model.init(k, v), jax.random.key(0), x)(jax.random.key(0), x)
    logits, feats = _compile(model.apply, variables, x)(variables, x)
    _close_interior(logits, upsample.bilinear(feats["score_fr"], size=(96, 96)), 16)
    assert not np.allclose(
        logits[:, :8], upsample.bilinear(feats["score_fr"], size=(96, 96))[:, :8]
    )


def test_skip_fusion_uses_pool3_and_pool4(fcn8s_64):
    model, variables, x = fcn8s_64

    def loss(params):
        logits, _ = model.apply({"params": params}, x)
        return jnp.mean(jnp.sin(logits * 3.0))

    grads = _compile(jax.grad(loss), variables["params"])(variables["params"])
    for name in ("score_pool4", "score_pool3"):
        assert np.abs(np.asarray(grads[name]["kernel"])).max() > 1e-6, name
    # A non-zero score_pool3 changes the logits: pool3 reaches the output.
    params = jax.tree.map(lambda a: a, variables["params"])
    params["score_pool3"] = {
        **params["score_pool3"],
        "kernel": params["score_pool3"]["kernel"] + 0.1,
    }
    apply = _compile(model.apply, {"params": params}, x)
    before, _ = apply(variables, x)
    after, feats = apply({"params": params}, x)
    assert np.abs(np.asarray(after - before)).max() > 1e-3


def _skip_terms(feats, params, at_once: bool):
    """(fused - upsampled coarser scores, score_pool(scale * pool)) for pool4 and pool3."""
    up = lambda y, name: upsample.transposed_conv(y, params[name]["kernel"][::-1, ::-1], 2, 1)  # noqa: E731
    terms = []
    for pool, coarse, up_name, scale in (
        ("pool4", feats["score_fr"], "upscore2", 0.01),
        ("pool3", feats["fuse_pool4"], "upscore_pool4", 1e-4),
    ):
        layer = params[f"score_{pool}"]
        inputs = feats[pool] * (scale if at_once else 1.0)
        score = jnp.einsum("bhwc,ck->bhwk", inputs, layer["kernel"][0, 0]) + layer["bias"]
        terms.append((feats[f"fuse_{pool}"] - up(coarse, up_name), score))
    return terms


@pytest.mark.parametrize("at_once", [False, True])
def test_skips_add_the_scored_pool_maps(at_once):
    model = _small(at_once=at_once)
    x = jax.random.normal(jax.random.key(5), (1, 64, 64, 1))
    variables = _host_fill(_abstract(model, x.shape)[1], seed=2)  # non-zero score_pool layers
    _, feats = _compile(model.apply, variables, x)(variables, x)
    for got, want in _skip_terms(feats, variables["params"], at_once):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
        assert np.abs(np.asarray(want)).max() > 1e-6


# ---- VGG classifier -> FCN ------------------------------------------------------------------


def _fc7_parity(vgg_name, fc_width, seed):
    vgg = models.create(vgg_name, num_classes=10, classifier_width=fc_width)
    net = models.create("fcn32s", num_classes=3, backbone=vgg_name, fc_width=fc_width)
    x = jax.random.normal(jax.random.key(seed), (1, 224, 224, 3))
    vgg_vars = _host_fill(_abstract(vgg, x.shape)[1], seed)
    fcn_vars = fcn.from_classifier(vgg_vars, _host_fill(_abstract(net, x.shape)[1], seed + 1))
    pre_logits = _compile(lambda v, i: vgg.apply(v, i)[1]["pre_logits"], vgg_vars, x)
    fc7 = _compile(lambda v, i: net.apply(v, i)[1]["fc7"], fcn_vars, x)
    want, got = np.asarray(pre_logits(vgg_vars, x)), np.asarray(fc7(fcn_vars, x))
    assert got.shape == (1, 7, 7, fc_width)
    # The centre of the 'same'-padded 7x7 fc6 sees exactly pool5's 7x7 map.
    np.testing.assert_allclose(got[:, 3, 3], want, rtol=2e-4, atol=2e-4 * np.abs(want).max())
    assert np.abs(want).max() > 1e-2 and (want > 0).mean() > 0.1
    return vgg_vars, fcn_vars


def test_from_classifier_vgg16_fc7_equals_classifier_pre_logits():
    vgg_vars, fcn_vars = _fc7_parity("vgg16", 4096, seed=0)
    np.testing.assert_array_equal(
        fcn_vars["params"]["backbone"]["features_28"]["kernel"],
        vgg_vars["params"]["features_28"]["kernel"],
    )


def test_from_classifier_moves_bn_statistics():
    vgg_vars, fcn_vars = _fc7_parity("vgg11_bn", 64, seed=3)
    np.testing.assert_array_equal(
        fcn_vars["batch_stats"]["backbone"]["features_1"]["mean"],
        vgg_vars["batch_stats"]["features_1"]["mean"],
    )


def test_from_classifier_rejects_other_configurations():
    vgg_vars = _abstract(models.create("vgg11", num_classes=10), (1, 224, 224, 3))[1]
    net_vars = _abstract(models.create("fcn8s", num_classes=3), (1, 224, 224, 3))[1]
    with pytest.raises(ConfigError, match="differ from the FCN backbone"):
        fcn.from_classifier(vgg_vars, net_vars)
    narrow = _abstract(
        models.create("fcn8s", num_classes=3, backbone="vgg11", fc_width=64), (1, 64, 64, 3)
    )
    with pytest.raises(ConfigError, match="classifier_0"):
        fcn.from_classifier(vgg_vars, narrow[1])


# ---- Speed rewrites and training ------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["vgg11", "resnet18"])
def test_speed_rewrites_reach_the_backbone(backbone):
    cfg = ml_collections.ConfigDict(
        {"compute_dtype": "bfloat16", "conv": "xla", "batch_norm": "cnnjax"}
    )
    model = models.create("fcn8s", num_classes=11, backbone=backbone, fc_width=64)
    fast = apply_to_model(model, cfg)
    conv = conv_for_backend("xla", materialize=resolve_materialize("auto"))
    assert fast.conv is conv and fast.dtype == jnp.bfloat16
    (logits, feats), variables = _abstract(model, (1, 64, 64, 3))
    (fast_logits, fast_feats), fast_variables = _abstract(fast, (1, 64, 64, 3))
    assert _shapes(fast_variables) == _shapes(variables)
    assert fast_logits.dtype == jnp.float32 and fast_logits.shape == logits.shape
    assert fast_feats["stride32"].dtype == jnp.bfloat16  # the backbone computes in bfloat16
    x = jnp.zeros((1, 64, 64, 3))
    convs = [
        str(jax.make_jaxpr(m.apply)(variables, x)).count("conv_general_dilated")
        for m in (model, fast)
    ]
    assert convs[1] == convs[0] > 0  # the same convolutions, in bfloat16 in the backbone


def test_one_train_step_reaches_every_parameter(fcn8s_64):
    model, variables, x = fcn8s_64
    labels = jax.random.randint(jax.random.key(3), x.shape[:3], 0, 11)
    tx = optax.sgd(0.05)

    def loss_fn(params):
        logits, _ = model.apply(
            {"params": params}, x, train=True, rngs={"dropout": jax.random.key(4)}
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), loss, grads

    params = variables["params"]
    new_params, loss, grads = _compile(step, params, tx.init(params))(params, tx.init(params))
    assert np.isfinite(float(loss))
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g))]
    assert not dead, dead
    eval_loss = _compile(loss_fn, params)
    assert float(eval_loss(new_params)) < float(eval_loss(params))
