"""Every classification model as a backbone for detection/segmentation heads: headless builds
(num_classes=0) against torchvision, feature maps by stride, dilated ResNets against
torchvision's replace_stride_with_dilation, and speed rewrites reaching a nested backbone.

Structure tests trace abstractly (jax.eval_shape: nothing is allocated or compiled); the
torchvision parity tests compile two ResNet forwards with XLA's O0 backend.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cnnjax import convert, models
from cnnjax.errors import ConfigError
from cnnjax.models import (
    alexnet,
    densenet,
    efficientnet,
    googlenet,
    lenet,
    mobilenet,
    preact_resnet,
    resnet,
    resnet_cifar,
    rewrite,
    shufflenet,
    squeezenet,
    vgg,
    xception,
)
from cnnjax.models.batch_norm import BatchNorm
from cnnjax.models.layers import features_at, maps_by_stride
from cnnjax.models.patch_conv import conv_for_backend
from tests.conftest import load_config

# The 59 classification entries (the registry also holds non-backbone models).
FAMILIES = (alexnet, densenet, efficientnet, googlenet, lenet, mobilenet, preact_resnet,
            resnet, resnet_cifar, shufflenet, squeezenet, vgg, xception)  # fmt: skip
BACKBONES = sorted(n for f in FAMILIES for n in f.MODELS)
# The deepest variants of families whose shallower entries run here (the same code, more
# blocks): traced in CI's second stage (zoo_full), where they cost ~1 CPU-minute.
DEEP = {"resnet1202_cifar", "plain110_cifar", "resnet110_cifar", "resnet101", "resnet152",
        "plain101", "plain152", "preact_resnet101", "preact_resnet152", "densenet161",
        "densenet169", "densenet201", *(f"efficientnet_b{i}" for i in range(2, 8))}  # fmt: skip
BACKBONE_PARAMS = [
    pytest.param(n, marks=[pytest.mark.zoo_full] if n in DEEP else [], id=n) for n in BACKBONES
]

# Flax modules of each family's classifier: what num_classes=0 leaves out (first prefix wins).
CLASSIFIER = (
    ("vgg", ("classifier_0", "classifier_3", "classifier_6")),
    ("alexnet", ("classifier_1", "classifier_4", "classifier_6")),
    ("lenet5", ("fc3",)),
    ("densenet", ("classifier",)),
    ("squeezenet", ("classifier_1",)),
    ("mobilenet_v1", ("conv_preds",)),
    ("mobilenet_v2", ("classifier_1",)),
    ("efficientnet", ("classifier_1",)),
    ("", ("fc",)),  # ResNets, CIFAR ResNets, GoogLeNet, ShuffleNets, Xception
)
# Exact map sizes at 64 px (LeNet: 32 px) where unpadded convolutions or pools make them smaller
# than ceil(64 / s); by hand, e.g. AlexNet conv1 (64 + 4 - 11) // 4 + 1 = 15, then 3/2 pools.
UNPADDED = {
    "alexnet": {4: 15, 8: 7, 16: 3, 32: 1},
    "squeezenet1_0": {2: 29, 4: 14, 8: 7, 16: 3},  # 7x7/2 valid: 29; ceil-mode 3/2 pools
    "squeezenet1_1": {2: 31, 4: 15, 8: 7, 16: 3},
    "xception": {2: 29, 4: 15, 8: 8, 16: 4, 32: 2},  # two valid 3x3 stem convs, then SAME
    "lenet5": {1: 28, 2: 10, 4: 5},  # 5x5 valid, pool, 5x5 valid, pool
}
STRIDES = {"vgg": (1, 2, 4, 8, 16, 32), "alexnet": (4, 8, 16, 32), "squeezenet": (2, 4, 8, 16)}
STRIDES |= {"lenet5": (1, 2, 4)}
DILATED = [("resnet50", 8), ("resnet18", 16), ("plain34", 8), ("se_resnet50", 16)]
DILATED += [("preact_resnet18", 8), ("preact_resnet50", 16)]


def test_the_backbones_are_the_59_classification_entries():
    assert len(BACKBONES) == 59 and set(BACKBONES) <= set(models.names())


def _by_prefix(table, name, default=None):
    return next((v for k, v in table if name.startswith(k)), default)


def _input(name):
    if name.endswith("_cifar"):
        return (1, 32, 32, 3)
    return (1, 32, 32, 1) if name == "lenet5" else (1, 64, 64, 3)


def _expected_strides(name, output_stride=32):
    if name.endswith("_cifar"):
        return (1, 2, 4)
    strides = _by_prefix(STRIDES.items(), name, (2, 4, 8, 16, 32))
    return tuple(s for s in strides if s <= output_stride)


def _count(params) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


@functools.cache
def _trace(name, num_classes, **kwargs):
    """Abstract init of `name`: (outputs, features, variables, facts) where facts, computed on
    the tracers, say whether the outputs are features['pre_logits'] and list every stride map
    that is not the last map at its resolution among the model's top-level module outputs."""
    model = models.create(name, num_classes=num_classes, **kwargs)
    facts = {}

    def run(x):
        calls = []

        def record(next_fun, args, kw, context):
            out = next_fun(*args, **kw)
            top = len(context.module.scope.path) == 1 and context.method_name == "__call__"
            if top and getattr(out, "ndim", 0) == 4:
                calls.append(out)
            return out

        with nn.intercept_methods(record):
            (out, feats), variables = model.init_with_output(jax.random.key(0), x)
        facts["outputs_are_pre_logits"] = out is feats["pre_logits"]
        facts["not_last"] = [s for s, m in maps_by_stride(feats).items() if not _is_last(m, calls)]
        facts["aliases"] = {
            k: [j for j, w in feats.items() if w is v and j != k]
            for k, v in feats.items()
            if k.startswith("stride")
        }
        return out, feats, variables

    out, feats, variables = jax.eval_shape(run, jnp.zeros(_input(name)))
    return out, feats, variables, facts


def _is_last(m, calls) -> bool:
    """m is the last top-level module output at its resolution, or computed after it in the
    parent (an activation or pool) with its shape; maps past every module (VGG's pool5) pass."""
    same = [y for y in calls if y.shape[1:3] == m.shape[1:3]]
    if any(m is y for y in same):
        return m is same[-1]
    return not same or same[-1].shape == m.shape


# ---- Headless backbones ------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONE_PARAMS)
def test_headless_is_the_full_model_less_its_classifier(name):
    full_out, full_feats, full, _ = _trace(name, 10)
    out, feats, headless, facts = _trace(name, 0)
    head = _by_prefix(CLASSIFIER, name)
    assert set(head) <= set(full["params"]) and not set(head) & set(headless["params"])
    # Same names for everything else, so pretrained weights load into the backbone by name.
    flat = traverse_util.flatten_dict
    kept = {k: v.shape for k, v in flat(full).items() if k[1] not in head}
    assert {k: v.shape for k, v in flat(headless).items()} == kept
    assert _count(headless["params"]) == _count(full["params"]) - sum(
        _count(full["params"][m]) for m in head
    )
    assert full_out.shape == (1, 10) and facts["outputs_are_pre_logits"]
    assert out.shape == feats["pre_logits"].shape and out.ndim == 2
    # Only VGG and AlexNet (whose whole fc classifier goes) change pre_logits.
    mlp_head = name.startswith(("vgg", "alexnet"))
    same = {k: v.shape for k, v in full_feats.items() if not (mlp_head and k == "pre_logits")}
    assert {k: v.shape for k, v in feats.items() if k in same} == same


def _torchvision_headless(name, **kwargs) -> int:
    """Parameters of a torchvision model less its classifier, built on the meta device."""
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    torchvision = pytest.importorskip("torchvision", reason="torch extra not installed")
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    head = model.fc if hasattr(model, "fc") else model.classifier
    return sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in head.parameters())


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet")
@pytest.mark.parametrize("name", convert.names())  # the entries torchvision also builds
def test_headless_parameters_equal_torchvision_without_its_classifier(name):
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    assert _count(_trace(name, 0)[2]["params"]) == _torchvision_headless(name, **kwargs)


def test_headless_counts_by_hand():
    # torchvision: sum(p.numel() for p in vgg16().features.parameters()); ResNet-50 without fc.
    assert _count(_trace("vgg16", 0)[2]["params"]) == 14_714_688
    assert _count(_trace("resnet50", 0)[2]["params"]) == 25_557_032 - 2048 * 1000 - 1000


def test_bad_headless_options_are_config_errors():
    x = jnp.zeros((1, 64, 64, 3))
    with pytest.raises(ConfigError, match="num_classes must be >= 0.*got -1"):
        jax.eval_shape(models.create("resnet18", num_classes=-1).init, jax.random.key(0), x)
    with pytest.raises(ConfigError, match="aux_logits=True needs num_classes > 0"):
        model = models.create("googlenet", num_classes=0, aux_logits=True)
        jax.eval_shape(model.init, jax.random.key(0), x)


# ---- Feature maps by stride ----------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONE_PARAMS)
def test_stride_maps_have_their_size_and_are_the_last_at_their_stride(name):
    _, feats, _, facts = _trace(name, 0)
    maps = maps_by_stride(feats)
    assert tuple(maps) == _expected_strides(name)
    size = _input(name)[1]
    want = UNPADDED.get(name) or {s: -(-size // s) for s in maps}
    assert {s: m.shape[1:3] for s, m in maps.items()} == {s: (want[s],) * 2 for s in maps}
    assert facts["not_last"] == []


ALIASES = {
    "resnet50": {2: [], 4: ["stage1"], 8: ["stage2"], 16: ["stage3"], 32: ["stage4"]},
    "vgg16": {1: ["stage1"], 2: ["stage2"], 4: ["stage3"], 8: ["stage4"], 16: ["stage5"]}
    | {32: ["pool5"]},
    "googlenet": {2: [], 4: ["stage1"], 8: ["stage2"], 16: ["stage3"], 32: ["stage4"]},
    "densenet121": {2: [], 4: ["stage1"], 8: ["stage2"], 16: ["stage3"], 32: ["stage4"]},
    "mobilenet_v2": {2: ["stem"], 4: ["stage1"], 8: ["stage2"], 16: ["stage3"], 32: ["stage4"]},
    "resnet20_cifar": {1: ["stage1"], 2: ["stage2"], 4: ["stage3"]},
}


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_stride_maps_are_the_family_maps_of_the_same_stride(name):
    _, feats, _, facts = _trace(name, 0)
    assert facts["aliases"] == {f"stride{s}": a for s, a in ALIASES[name].items()}


def test_vgg_names_its_pools():
    feats = _trace("vgg16", 0)[1]
    assert [feats[f"pool{k}"].shape[1:] for k in range(1, 6)] == [
        (32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512), (2, 2, 512)
    ]  # fmt: skip


def test_features_at_picks_maps_by_stride_and_lists_the_available_ones():
    feats = {"stem": 0, "stride4": "a", "stride8": "b", "stride16": "c", "pre_logits": 1}
    assert maps_by_stride(feats) == {4: "a", 8: "b", 16: "c"}
    assert features_at(feats, (16, 4)) == ("c", "a")
    with pytest.raises(ConfigError, match=r"stride\(s\) \[32\]; available strides: \[4, 8, 16\]"):
        features_at(feats, (8, 16, 32))


# ---- Dilated ResNets -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "output_stride"), DILATED)
def test_output_stride_keeps_parameters_and_names_maps_by_their_true_stride(name, output_stride):
    _, feats, variables, facts = _trace(name, 0, output_stride=output_stride)
    plain = _trace(name, 0)[2]
    assert jax.tree.map(lambda v: v.shape, variables) == jax.tree.map(lambda v: v.shape, plain)
    maps = maps_by_stride(feats)
    assert tuple(maps) == _expected_strides(name, output_stride)
    assert {s: m.shape[1] for s, m in maps.items()} == {s: 64 // s for s in maps}
    assert facts["aliases"][f"stride{output_stride}"] == ["stage4"] and facts["not_last"] == []
    assert feats["stage3"].shape[1] == 64 // min(16, output_stride)


@pytest.mark.parametrize("name", ["resnet50", "preact_resnet18"])
@pytest.mark.parametrize("output_stride", [4, 64, 12])
def test_bad_output_stride_is_a_config_error(name, output_stride):
    model = models.create(name, num_classes=0, output_stride=output_stride)
    match = rf"output_stride must be one of \(8, 16, 32\), got {output_stride}"
    with pytest.raises(ConfigError, match=match):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def _torch_resnet(name, **kwargs):
    """Seeded torchvision ResNet in eval mode with non-trivial BatchNorm statistics."""
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    torchvision = pytest.importorskip("torchvision", reason="torch extra not installed")
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    return model


def _dilate_basic_blocks(model, output_stride):
    """torchvision's replace_stride_with_dilation rule on BasicBlocks, which torchvision itself
    refuses: a stage past the output stride runs at stride 1, its first block at the previous
    dilation, the others at the new one; both 3x3 convs of a block dilated."""
    dilation, stride = 1, 8
    for layer in (model.layer3, model.layer4):
        previous, stride = dilation, stride * 2
        if stride > output_stride:
            dilation *= 2
            layer[0].conv1.stride = layer[0].downsample[0].stride = (1, 1)
        for j, block in enumerate(layer):
            d = previous if j == 0 else dilation
            for conv in (block.conv1, block.conv2):
                conv.dilation, conv.padding = (d, d), (d, d)


def _torch_maps(model, x):
    """-> (logits, {stride2, stage1..stage4}) of a torchvision ResNet as NHWC numpy arrays."""
    import torch

    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
    maps = {}
    with torch.no_grad():
        y = model.relu(model.bn1(model.conv1(x)))
        maps["stride2"] = nhwc(y)
        y = model.maxpool(y)
        for k in range(1, 5):
            y = getattr(model, f"layer{k}")(y)
            maps[f"stage{k}"] = nhwc(y)
        logits = model.fc(torch.flatten(model.avgpool(y), 1)).numpy()
    return logits, maps


@pytest.mark.parametrize(
    ("name", "output_stride"), [("resnet50", 8), ("resnet50", 16), ("resnet18", 8)]
)
def test_dilated_resnet_matches_torchvision(name, output_stride):
    import torch

    if name == "resnet50":
        dilate = [False, output_stride == 8, True]  # [False, False, True] for 16
        tmodel = _torch_resnet(name, replace_stride_with_dilation=dilate)
    else:
        tmodel = _torch_resnet(name)
        _dilate_basic_blocks(tmodel, output_stride)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    want_logits, want = _torch_maps(tmodel, x)
    variables = convert.from_torchvision(name, tmodel.state_dict(), output_stride=output_stride)
    model = models.create(name, num_classes=1000, output_stride=output_stride)
    forward = lambda v, x: model.apply(v, x)
    with jax.default_matmul_precision("highest"):
        nhwc = x.numpy().transpose(0, 2, 3, 1)
        lowered = jax.jit(forward).lower(variables, nhwc)
        compiled = lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
        logits, feats = compiled(variables, nhwc)
    assert feats["stage4"].shape[1:3] == (64 // output_stride,) * 2
    assert feats[f"stride{output_stride}"].shape == want["stage4"].shape
    for key, ref in {"logits": want_logits, **want}.items():
        got = np.asarray(logits if key == "logits" else feats[key])
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(got, ref, atol=1e-4 * scale, err_msg=key)


# ---- Speed options reach a nested backbone -------------------------------------------------------


class Composite(nn.Module):
    """A head on a registry backbone held as a Module-valued field (as FCN/DeepLab will)."""

    backbone: nn.Module = None
    num_classes: int = 3
    conv: Any = nn.Conv
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        _, feats = self.backbone(x, train=train)
        (top,) = features_at(feats, (32,))
        y = self.conv(self.num_classes, (1, 1), dtype=self.dtype, name="head")(top)
        return y.mean(axis=(1, 2)).astype(jnp.float32), feats


def _train_cfg(**overrides):
    cfg = load_config("configs/resnet20_cifar.py", "digits,smoke")
    with cfg.unlocked():
        for k, v in overrides.items():
            setattr(cfg.train, k, v)
    return cfg.train


def test_speed_rewrites_reach_a_nested_backbone():
    model = Composite(backbone=models.create("resnet18", num_classes=0))
    cfg = _train_cfg(compute_dtype="bfloat16", conv="xla", batch_norm="cnnjax")
    fast = rewrite.apply_to_model(model, cfg)
    assert fast.dtype == fast.backbone.dtype == jnp.bfloat16
    conv = conv_for_backend("xla", materialize=rewrite.resolve_materialize("auto"))
    assert fast.conv is conv and fast.backbone.conv is conv
    assert fast.backbone.norm is BatchNorm
    assert model.backbone.dtype == jnp.float32 and model.backbone.norm is nn.BatchNorm  # a copy
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    fast_compile = {"xla_backend_optimization_level": 0}
    variables = jax.jit(fast.init, compiler_options=fast_compile)(jax.random.key(0), x)
    assert set(variables["params"]) == {"backbone", "head"}
    assert set(variables["batch_stats"]) == {"backbone"}
    backbone = jax.eval_shape(model.backbone.init, jax.random.key(0), x)
    assert _count(variables["params"]) == _count(backbone["params"]) + 512 * 3 + 3
    assert _count(backbone["params"]) == 11_689_512 - (512 * 1000 + 1000)
    train = lambda v, x: fast.apply(v, x, train=True, mutable=["batch_stats"])
    (logits, feats), updates = jax.jit(train, compiler_options=fast_compile)(variables, x)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert feats["stride32"].dtype == jnp.bfloat16  # the backbone computes in bfloat16
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         updates["batch_stats"])  # fmt: skip
    assert all(jax.tree.leaves(moved))  # the nested BatchNorms (cnnjax's) ran in training mode


def test_rewrite_recurses_into_tuples_and_names_a_nested_model_without_dtype():
    class NoDtype(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return x, {}

    class Many(nn.Module):
        parts: tuple = ()
        dtype: Any = jnp.float32

    many = Many(parts=(models.create("resnet18", num_classes=0), "not a module"))
    fast = rewrite.apply_to_model(many, _train_cfg(compute_dtype="bfloat16"))
    assert fast.parts[0].dtype == jnp.bfloat16 and fast.parts[1] == "not a module"
    bad = Many(parts=[NoDtype()])
    with pytest.raises(ConfigError, match=r"'Many.parts\[0\]' has no dtype field"):
        rewrite.apply_to_model(bad, _train_cfg(compute_dtype="bfloat16"))
