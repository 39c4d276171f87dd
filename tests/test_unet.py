"""U-Net: parameter counts against a closed formula (and the Keras figure of the paper's layer
set), the paper's Figure 1 map sizes with unpadded convolutions, crop-and-copy alignment,
shapes, a train step reaching every parameter, speed rewrites, configuration errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax import lax

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.models import rewrite
from cnnjax.models.batch_norm import BatchNorm
from cnnjax.models.segmentation.unet import center_crop, overlap_tile_pads, valid_sizes

FAST = {"xla_backend_optimization_level": 0}


def _init_shapes(model, shape):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


def _count(tree) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def unet_params(cin, classes, width=64, depth=4, bn=True, up="transpose") -> int:
    """Closed form: 3x3 convs (bias only without BN; BN adds scale + shift), 2x2 transposed
    (or 1x1) convs with bias halving the channels, a 1x1 classifier with bias."""
    conv = lambda i, o, k: k * k * i * o + (0 if bn else o)
    double = lambda i, o: conv(i, o, 3) + conv(o, o, 3) + (4 * o if bn else 0)
    c = [width * 2**i for i in range(depth + 1)]
    n = double(cin, c[0]) + sum(double(c[i - 1], c[i]) for i in range(1, depth + 1))
    taps = 4 if up == "transpose" else 1
    n += sum(taps * c[i + 1] * c[i] + c[i] + double(2 * c[i], c[i]) for i in range(depth))
    return n + c[0] * classes + classes


@pytest.mark.parametrize(
    ("cin", "classes", "kwargs"),
    [
        (3, 2, {}),
        (1, 11, dict(width=8)),
        (3, 5, dict(width=4, depth=2, up="bilinear")),
        (1, 2, dict(width=6, norm=None)),
        (3, 3, dict(width=4, depth=3, padding="valid", norm=None, up="bilinear")),
    ],
)
def test_parameter_count_follows_the_formula(cin, classes, kwargs):
    model = models.create("unet", num_classes=classes, **kwargs)
    params = _init_shapes(model, (1, 64, 64, cin))["params"]
    formula = dict(bn=kwargs.get("norm", nn.BatchNorm) is not None)
    formula.update({k: v for k, v in kwargs.items() if k in ("width", "depth", "up")})
    assert _count(params) == unet_params(cin, classes, **formula)
    if not kwargs:  # milesial/Pytorch-UNet's layer set (BN, same padding, transposed up)
        assert _count(params) == 31_037_698


def test_paper_layer_set_matches_the_keras_figure():
    """The often-quoted 31,031,685 is zhixuhao/unet's Keras summary: the paper's layers (no BN,
    biased convs) on 1 channel, with a 3x3 conv to 2 channels and a 1x1 to 1 as the output
    instead of one 1x1 to the classes."""
    params = _init_shapes(models.create("unet", num_classes=2, norm=None), (1, 64, 64, 1))
    ours = _count(params["params"])
    assert ours - (64 * 2 + 2) + (9 * 64 * 2 + 2) + (2 * 1 + 1) == 31_031_685


def test_valid_padding_reproduces_the_papers_figure_1():
    model = models.create("unet", num_classes=2, width=1, padding="valid", norm=None)
    shape = (1, 388, 388, 1)
    logits, feats = jax.eval_shape(model.apply, _init_shapes(model, shape), jnp.zeros(shape))
    sides = {k: v.shape[1] for k, v in feats.items()}
    assert sides == {"stride1": 568, "stride2": 280, "stride4": 136, "stride8": 64,
                     "stride16": 28, "decoder8": 52, "decoder4": 100, "decoder2": 196,
                     "decoder1": 388, "pre_logits": 388}  # fmt: skip
    assert logits.shape == (1, 388, 388, 2) and overlap_tile_pads(388) == (92, 92)


def test_valid_sizes_and_tile_padding():
    assert valid_sizes(388) == (572, 388) and valid_sizes(64) == (252, 68)
    for depth, margin in ((4, 184), (2, 40), (1, 16)):
        for n in range(1, 150):
            inp, out = valid_sizes(n, depth)
            assert inp - out == margin and out >= n > out - 2**depth, (n, depth)
            before, after = overlap_tile_pads(n, depth)
            assert before + n + after == inp and before >= margin // 2


def test_center_crop():
    x = jnp.arange(2 * 7 * 6 * 1).reshape(2, 7, 6, 1)
    np.testing.assert_array_equal(center_crop(x, (3, 2)), x[:, 2:5, 2:4])
    np.testing.assert_array_equal(center_crop(x, (6, 3)), x[:, 0:6, 1:4])  # odd: extra at end
    np.testing.assert_array_equal(center_crop(x, (7, 6)), x)
    with pytest.raises(ValueError, match=r"cannot crop \(7, 6\) to the larger \(8, 2\)"):
        center_crop(x, (8, 2))


def _identity_path(params):
    """Weights under which only the level-0 path (encoder_0 -> crop-and-copy -> decoder_0 ->
    logits) carries channel 0 through centre taps: the output then equals the input pixel
    that each output pixel is aligned with."""
    flat = {k: jnp.zeros_like(v) for k, v in traverse_util.flatten_dict(params).items()}
    for module in ("encoder_0", "decoder_0"):
        for conv in ("conv1", "conv2"):
            key = (module, conv, "kernel")
            flat[key] = flat[key].at[1, 1, 0, 0].set(1.0)
    flat["logits", "kernel"] = flat["logits", "kernel"].at[0, 0, 0, 0].set(1.0)
    return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize(("padding", "shape"), [("valid", (37, 50)), ("same", (32, 48))])
def test_crop_and_copy_keeps_every_pixel_aligned(padding, shape):
    model = models.create("unet", num_classes=2, width=1, depth=2, padding=padding, norm=None)
    x = jax.random.uniform(jax.random.key(1), (1, *shape, 1), minval=0.5, maxval=1.5)
    params = _identity_path(_init_shapes(model, x.shape)["params"])
    forward = jax.jit(model.apply).lower({"params": params}, x).compile(FAST)
    logits, _ = forward({"params": params}, x)
    np.testing.assert_allclose(np.asarray(logits[..., 0]), np.asarray(x[..., 0]), rtol=1e-6)


@pytest.mark.parametrize(
    ("channels", "classes", "kwargs"),
    [
        (1, 11, dict(width=4)),
        (3, 2, dict(width=4, up="bilinear")),
        (3, 3, dict(width=4, depth=3, padding="valid")),
    ],
)
def test_shapes_at_64_px(channels, classes, kwargs):
    model = models.create("unet", num_classes=classes, **kwargs)
    for shape in [(2, 64, 64, channels), (1, 48, 80, channels)]:
        logits, feats = jax.eval_shape(model.apply, _init_shapes(model, shape), jnp.zeros(shape))
        assert logits.shape == (*shape[:3], classes) and logits.dtype == jnp.float32
        if kwargs.get("padding") != "valid":
            assert feats["stride16"].shape == (shape[0], shape[1] // 16, shape[2] // 16, 64)


@pytest.mark.parametrize("kwargs", [dict(), dict(up="bilinear", norm=None)])
def test_one_train_step_reaches_every_parameter(kwargs):
    model = models.create("unet", num_classes=3, width=4, **kwargs)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 1))
    labels = jax.random.randint(jax.random.key(2), (2, 64, 64), 0, 3)
    variables = jax.jit(model.init, compiler_options=FAST)(jax.random.key(0), x)

    def loss_fn(params):
        (logits, _), upd = model.apply({**variables, "params": params}, x, train=True,
                                       mutable=["batch_stats"])  # fmt: skip
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), upd

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(variables["params"])
    (loss, upd), grads = step.compile(FAST)(variables["params"])
    assert np.isfinite(float(loss))
    flat = traverse_util.flatten_dict(grads, sep="/")
    # 18 3x3 kernels, with BN scale + bias each, or a bias; 4 up convs and the 1x1 classifier.
    assert len(flat) == (18 * 3 if "norm" not in kwargs else 18 * 2) + 5 * 2
    assert not [k for k, g in flat.items() if not np.any(g)]
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), variables.get("batch_stats", {}),
                         upd.get("batch_stats", {}))  # fmt: skip
    assert all(jax.tree.leaves(moved))


def test_speed_rewrites_reach_every_layer():
    model = models.create("unet", num_classes=3, width=4)
    cfg = ml_collections.ConfigDict(
        {"compute_dtype": "bfloat16", "conv": "xla", "batch_norm": "cnnjax"}
    )
    fast = rewrite.apply_to_model(model, cfg)
    shape = (1, 64, 64, 3)
    slow_shapes, fast_shapes = _init_shapes(model, shape), _init_shapes(fast, shape)
    same = jax.tree.map(lambda a, b: a.shape == b.shape, slow_shapes, fast_shapes)
    assert all(jax.tree.leaves(same))
    kinds = {}

    def record(next_fun, args, kwargs, context):
        m = context.module
        if isinstance(m, nn.Conv | nn.BatchNorm | BatchNorm):
            fn = getattr(m, "conv_general_dilated", None)
            # the rewrite swapped XLA's plain convolution for its CPU variant (the recompute
            # barrier and the depthwise dispatch around it)
            swapped = fn is not None and fn is not lax.conv_general_dilated
            kinds["/".join(m.scope.path)] = (type(m), swapped, m.dtype)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        logits, feats = jax.eval_shape(fast.apply, fast_shapes, jnp.zeros(shape))
    assert logits.dtype == jnp.float32 and feats["stride16"].dtype == jnp.bfloat16
    assert len(kinds) == 37  # 18 convs + 18 BNs in 9 DoubleConvs, the classifier
    for path, (kind, patch, dtype) in kinds.items():
        assert dtype == jnp.bfloat16 and kind in (nn.Conv, BatchNorm), path
        assert patch == (kind is nn.Conv), path


def test_bad_configurations_name_the_value():
    cases = [
        (dict(), (1, 60, 60, 3), "divisible by 16, got 60x60"),
        (dict(depth=3), (1, 64, 36, 3), "divisible by 8, got 64x36"),
        (dict(padding="full"), (1, 64, 64, 3), "padding must be one of.*got 'full'"),
        (dict(up="nearest"), (1, 64, 64, 3), "up must be one of.*got 'nearest'"),
        (dict(num_classes=0), (1, 64, 64, 3), "num_classes >= 1, got 0"),
    ]
    for kwargs, shape, match in cases:
        with pytest.raises(ConfigError, match=match):
            _init_shapes(models.create("unet", **{"num_classes": 2, "width": 2, **kwargs}), shape)
    _init_shapes(models.create("unet", num_classes=2, width=2, depth=2), (1, 60, 60, 3))
