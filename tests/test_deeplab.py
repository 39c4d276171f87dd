"""DeepLab v3 and torchvision's FCN head: exact parameter counts and logits against
torchvision's segmentation models, ASPP rates by output stride, multi-grid dilations, a train
step reaching every parameter, speed rewrites reaching the backbone, configuration errors.

Structure tests trace abstractly (jax.eval_shape); forwards compile with XLA's O0 backend.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax import lax

from cnnjax import convert, models
from cnnjax.errors import ConfigError
from cnnjax.models import rewrite
from cnnjax.models.batch_norm import BatchNorm
from cnnjax.models.segmentation.deeplab import aspp_rates

FAST = {"xla_backend_optimization_level": 0}
# torchvision segmentation.*_resnet50(weights=None, weights_backbone=None, num_classes=21)
TORCHVISION_PARAMS = {
    ("deeplabv3", False): 39_638_869,
    ("deeplabv3", True): 42_004_074,
    ("fcn_resnet", False): 32_957_013,
    ("fcn_resnet", True): 35_322_218,
}
TORCHVISION_NAME = {"deeplabv3": "deeplabv3_resnet50", "fcn_resnet": "fcn_resnet50"}


def _init_shapes(model, shape=(1, 64, 64, 3)):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


def _count(tree) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def _conv_dilations(model, shape=(1, 64, 64, 3)) -> dict[str, int]:
    """{flax path: kernel dilation} of every convolution the model runs (traced, not run)."""
    seen = {}

    def record(next_fun, args, kwargs, context):
        m = context.module
        if isinstance(m, nn.Conv) and context.method_name == "__call__":
            d = m.kernel_dilation
            seen["/".join(m.scope.path)] = d if isinstance(d, int) else tuple(d or (1,))[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _init_shapes(model, shape)
    return seen


# ---- Structure ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "aux"), sorted(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision(name, aux):
    params = _init_shapes(models.create(name, num_classes=21, aux=aux))["params"]
    assert _count(params) == TORCHVISION_PARAMS[name, aux]
    assert set(params) == {"backbone", "classifier"} | ({"aux_classifier"} if aux else set())


@pytest.mark.parametrize(
    ("name", "kwargs", "channels"),
    [
        ("deeplabv3", dict(backbone="resnet18", num_classes=11), 1),
        ("deeplabv3", dict(backbone="resnet18", num_classes=3, output_stride=16), 3),
        ("fcn_resnet", dict(backbone="resnet18", num_classes=5), 3),
        ("fcn_resnet", dict(backbone="resnet34", num_classes=2, output_stride=32), 1),
    ],
)
def test_logits_are_float32_at_the_input_size(name, kwargs, channels):
    model = models.create(name, **kwargs)
    for shape in [(2, 64, 64, channels), (1, 48, 80, channels)]:
        variables = _init_shapes(model, shape)
        logits, feats = jax.eval_shape(model.apply, variables, jnp.zeros(shape))
        assert logits.shape == (*shape[:3], kwargs["num_classes"])
        assert logits.dtype == jnp.float32
        os = kwargs.get("output_stride", 8)
        assert feats["head"].shape[1:3] == (-(-shape[1] // os), -(-shape[2] // os))


def test_aspp_rates_double_at_output_stride_8():
    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(8) == (12, 24, 36)
    assert aspp_rates(8, (2, 4)) == (2, 4)
    for os, rates in [(16, (6, 12, 18)), (8, (12, 24, 36))]:
        d = _conv_dilations(models.create("deeplabv3", num_classes=3, output_stride=os))
        aspp = {k.split("/")[2]: v for k, v in d.items() if k.startswith("classifier/aspp/")}
        assert aspp == {"convs_0": 1, "convs_1": rates[0], "convs_2": rates[1],
                        "convs_3": rates[2], "pooling": 1, "project": 1}  # fmt: skip


def test_multi_grid_multiplies_the_last_stage_dilations():
    def layer_dilations(**kwargs):
        d = _conv_dilations(models.create("deeplabv3", num_classes=3, **kwargs))
        return {k: tuple(d[f"backbone/layer{k}_{j}/conv2"] for j in range(n))
                for k, n in ((3, 6), (4, 3))}  # fmt: skip

    # torchvision's replace_stride_with_dilation: the first block keeps the previous rate.
    assert layer_dilations() == {3: (1, 2, 2, 2, 2, 2), 4: (2, 4, 4)}
    assert layer_dilations(multi_grid=(1, 2, 4)) == {3: (1, 2, 2, 2, 2, 2), 4: (2, 8, 16)}
    assert layer_dilations(output_stride=16) == {3: (1,) * 6, 4: (1, 2, 2)}
    assert layer_dilations(output_stride=16, multi_grid=(1, 2, 4))[4] == (1, 4, 8)
    # ResNet-18's last stage has two blocks: the default grid fits it, a 3-unit grid does not.
    assert _conv_dilations(models.create("deeplabv3", backbone="resnet18", num_classes=3))
    with pytest.raises(ConfigError, match=r"one positive int per block of the last stage \(2\)"):
        _init_shapes(models.create("deeplabv3", backbone="resnet18", num_classes=3,
                                   multi_grid=(1, 2, 4)))  # fmt: skip


def test_bad_configurations_name_the_value():
    cases = [
        ("deeplabv3", dict(output_stride=32), "output_stride must be 8 or 16, got 32"),
        ("deeplabv3", dict(rates=(6, 0)), r"rates must be positive ints, got \(6, 0\)"),
        ("fcn_resnet", dict(output_stride=4), "output_stride must be one of.*got 4"),
        ("fcn_resnet", dict(num_classes=0), "num_classes >= 1, got 0"),
        ("deeplabv3", dict(backbone="resnet05"), "unknown model 'resnet05'"),
        ("deeplabv3", dict(backbone="vgg11"), r"'vgg11' has no option\(s\) \['output_stride'\]"),
    ]
    for name, kwargs, match in cases:
        with pytest.raises(ConfigError, match=match):
            _init_shapes(models.create(name, **{"num_classes": 3, **kwargs}))


# ---- Training --------------------------------------------------------------------------------


def test_one_train_step_reaches_every_parameter():
    model = models.create("deeplabv3", backbone="resnet18", num_classes=4, aux=True)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    labels = jax.random.randint(jax.random.key(2), (2, 64, 64), 0, 4)

    def loss_fn(params, stats):
        (logits, feats), upd = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True,
            mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)},
        )  # fmt: skip
        ce = optax.softmax_cross_entropy_with_integer_labels
        loss = ce(logits, labels).mean() + 0.5 * ce(feats["aux_logits"], labels).mean()
        return loss, upd["batch_stats"]

    variables = jax.jit(model.init, compiler_options=FAST)(jax.random.key(0), x)
    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(
        variables["params"], variables["batch_stats"]
    )
    (loss, stats), grads = step.compile(FAST)(variables["params"], variables["batch_stats"])
    assert np.isfinite(float(loss))
    dead = [k for k, g in traverse_util.flatten_dict(grads, sep="/").items() if not np.any(g)]
    assert not dead, dead
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), variables["batch_stats"], stats)
    assert all(jax.tree.leaves(moved))
    # At 64 px / output stride 8 the map is 8x8: a 3x3 at rate >= 8 only ever sees the map
    # through its centre tap (the paper's motivation for image pooling).
    aspp = grads["classifier"]["aspp"]
    for branch in ("convs_1", "convs_2", "convs_3"):
        g = np.abs(np.asarray(aspp[branch]["conv"]["kernel"])).sum(axis=(2, 3))
        assert g[1, 1] > 0 and np.count_nonzero(g) == 1, (branch, g)


def test_speed_rewrites_reach_the_backbone():
    model = models.create("deeplabv3", backbone="resnet18", num_classes=3)
    cfg = ml_collections.ConfigDict(
        {"compute_dtype": "bfloat16", "conv": "xla", "batch_norm": "cnnjax"}
    )
    fast = rewrite.apply_to_model(model, cfg)
    assert fast.dtype == jnp.bfloat16 and fast.norm is BatchNorm
    slow_shapes, fast_shapes = _init_shapes(model), _init_shapes(fast)
    assert jax.tree.map(lambda s: s.shape, slow_shapes) == jax.tree.map(
        lambda s: s.shape, fast_shapes
    )
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
        logits, feats = jax.eval_shape(fast.apply, fast_shapes, jnp.zeros((1, 64, 64, 3)))
    assert logits.dtype == jnp.float32 and feats["stride8"].dtype == jnp.bfloat16
    for path in ("backbone/layer1_0/conv1", "classifier/aspp/convs_1/conv", "classifier/logits"):
        assert kinds[path] == (nn.Conv, True, jnp.bfloat16), path
    for path in ("backbone/bn1", "backbone/layer4_1/bn2", "classifier/aspp/pooling/bn"):
        assert kinds[path] == (BatchNorm, False, jnp.bfloat16), path
    # ResNet-18: 20 convs + 20 BNs; ASPP: 6 + 6; head: conv, BN, logits.
    assert len(kinds) == 55 and all(k[0] is not nn.BatchNorm for k in kinds.values())
    assert all(k[2] == jnp.bfloat16 for k in kinds.values())


# ---- torchvision parity ----------------------------------------------------------------------


def _torch():
    """(torch, torchvision), or a skip: torch is an optional extra (pip install -e .[torch])."""
    reason = "torch extra not installed"
    return pytest.importorskip("torch", reason=reason), pytest.importorskip("torchvision")


def _torch_model(name: str, aux: bool, num_classes: int = 11):
    """Seeded random torchvision model in eval mode with non-trivial BatchNorm statistics."""
    torch, torchvision = _torch()
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        TORCHVISION_NAME[name], weights=None, weights_backbone=None,
        num_classes=num_classes, aux_loss=aux,
    ).eval()  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize(("name", "aux"), [("deeplabv3", False), ("fcn_resnet", True)])
def test_logits_match_torchvision(name, aux):
    torch, _ = _torch()
    tmodel = _torch_model(name, aux)
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = {k: v.numpy().transpose(0, 2, 3, 1) for k, v in tmodel(x).items()}
    variables = convert.from_torchvision(name, tmodel.state_dict(), aux=aux)
    model = models.create(name, num_classes=11, aux=aux)
    nhwc = x.numpy().transpose(0, 2, 3, 1)
    with jax.default_matmul_precision("highest"):
        forward = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, nhwc).compile(FAST)
        logits, feats = forward(variables, nhwc)
    got = {"out": np.asarray(logits), **({"aux": np.asarray(feats["aux_logits"])} if aux else {})}
    assert got.keys() == want.keys()
    for key, ref in want.items():
        scale = max(1.0, float(np.abs(ref).max()))
        err = float(np.abs(got[key] - ref).max())
        print(f"{name} {key}: max |logit| {scale:.3g}, max abs error {err:.3g}")
        assert err <= 1e-4 * scale, (key, err, scale)


def _meta_shapes(tv_name: str, **kwargs) -> dict[str, tuple[int, ...]]:
    """Shapes of a torchvision state dict, built on the meta device (no memory, no init)."""
    torch, torchvision = _torch()
    with torch.device("meta"):
        model = torchvision.models.get_model(tv_name, weights=None, weights_backbone=None, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["deeplabv3", "fcn_resnet"])
@pytest.mark.parametrize("depth", [50, 101])
def test_every_torchvision_key_converts_by_shape(name, depth):
    tv_name = TORCHVISION_NAME[name].replace("50", str(depth))
    shapes = _meta_shapes(tv_name, aux_loss=True)
    tracked = {k for k in shapes if not k.endswith("num_batches_tracked")}
    kw = {"backbone": f"resnet{depth}"}
    plan = convert.check(name, shapes, aux=True, **kw)
    assert set(plan) == tracked
    without_aux = convert.check(name, shapes, **kw)  # the aux head is optional
    assert set(without_aux) == {k for k in tracked if not k.startswith("aux_classifier.")}
    assert plan["classifier.4.weight"] == "params/classifier/logits/kernel"
    assert plan["aux_classifier.1.running_var"] == "batch_stats/aux_classifier/bn/var"
    assert plan["backbone.layer2.0.downsample.1.weight"] == (
        "params/backbone/layer2_0/downsample_bn/scale"
    )
    if name == "deeplabv3":
        assert plan["classifier.0.convs.4.1.weight"] == "params/classifier/aspp/pooling/conv/kernel"
        assert plan["classifier.0.project.1.bias"] == "params/classifier/aspp/project/bn/bias"


@pytest.mark.parametrize(("name", "aux"), sorted(TORCHVISION_PARAMS))
def test_torchvision_itself_has_the_counted_parameters(name, aux):
    torch, torchvision = _torch()
    with torch.device("meta"):
        tmodel = torchvision.models.get_model(
            TORCHVISION_NAME[name], weights=None, weights_backbone=None, num_classes=21,
            aux_loss=aux,
        )  # fmt: skip
    assert sum(p.numel() for p in tmodel.parameters()) == TORCHVISION_PARAMS[name, aux]


def test_segmentation_conversions_are_listed_apart():
    assert convert.segmentation_names() == ["deeplabv3", "fcn_resnet"]
    assert not set(convert.segmentation_names()) & set(convert.names())
    assert convert.head_module("deeplabv3") == convert.head_module("fcn_resnet")
    assert convert.head_module("deeplabv3") == "classifier/logits"
