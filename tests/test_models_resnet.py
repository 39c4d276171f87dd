"""ResNet structure: exact parameter counts against torchvision and the ResNet paper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.errors import ConfigError

# torchvision weight metadata (ImageNet, 1000 classes).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# ResNet paper, CIFAR-10 nets (option A): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M.
CIFAR_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}


def count(name, size, num_classes, **kw):
    model = models.create(name, num_classes=num_classes, **kw)
    x = jnp.zeros((1, size, size, 3))
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(v["params"]))


@pytest.mark.parametrize("name,expected", sorted(TORCHVISION_PARAMS.items()))
def test_resnet_params_equal_torchvision(name, expected):
    assert count(name, 224, 1000) == expected


@pytest.mark.parametrize("depth", [18, 34])
def test_plain_twin_drops_only_projection_shortcuts(depth):
    # Basic-block nets: the only shortcut parameters are the 3 projection convs + BNs.
    widths = [(64, 128), (128, 256), (256, 512)]
    projection = sum(cin * cout + 2 * cout for cin, cout in widths)
    assert count(f"plain{depth}", 224, 1000) == TORCHVISION_PARAMS[f"resnet{depth}"] - projection


@pytest.mark.parametrize("depth,millions", sorted(CIFAR_PARAMS_M.items()))
def test_cifar_resnet_params_match_paper(depth, millions):
    n = count(f"resnet{depth}_cifar", 32, 10)
    assert round(n / 1e6, 2 if millions < 1 else 1) == millions


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_cifar_plain_twin_has_same_count_with_option_a(depth):
    assert count(f"plain{depth}_cifar", 32, 10) == count(f"resnet{depth}_cifar", 32, 10)


def test_cifar_option_b_adds_two_projections():
    a = count("resnet20_cifar", 32, 10, shortcut="A")
    b = count("resnet20_cifar", 32, 10, shortcut="B")
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_features_have_stable_names_and_shapes():
    model = models.create("resnet18", num_classes=7)
    x = jnp.ones((2, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    logits, feats = jax.jit(model.apply)(variables, x)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert {k: v.shape for k, v in feats.items()} == {
        "stem": (2, 16, 16, 64),
        "stage1": (2, 16, 16, 64),
        "stage2": (2, 8, 8, 128),
        "stage3": (2, 4, 4, 256),
        "stage4": (2, 2, 2, 512),
        "pre_logits": (2, 512),
        # the last map at each output stride (tests/test_backbones.py): the stage outputs, and
        # conv1 + bn1 + ReLU before the max-pool at stride 2
        "stride2": (2, 32, 32, 64),
        "stride4": (2, 16, 16, 64),
        "stride8": (2, 8, 8, 128),
        "stride16": (2, 4, 4, 256),
        "stride32": (2, 2, 2, 512),
    }


def test_residual_and_plain_differ_only_by_shortcut():
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    res = models.create("resnet20_cifar", num_classes=10)
    plain = models.create("plain20_cifar", num_classes=10)
    v = jax.jit(res.init)(jax.random.key(0), x)
    out_res, _ = jax.jit(res.apply)(v, x)
    out_plain, _ = jax.jit(plain.apply)(v, x)  # same parameters fit both
    assert not np.allclose(out_res, out_plain)


def test_registry_errors_name_the_closest_model_and_bad_kwargs():
    with pytest.raises(ConfigError, match="Did you mean 'resnet34'"):
        models.create("resnet43", num_classes=10)
    with pytest.raises(ConfigError, match="no option.*widht"):
        models.create("resnet18", num_classes=10, widht=3)
    assert {"resnet34", "plain34", "resnet20_cifar"} <= set(models.names())


def test_a_plain_entry_refuses_a_shortcut_that_would_make_it_residual():
    """configs/resnet20_cifar.py sets model.kwargs.shortcut='A'; pointing model.name at a
    plain entry must not silently train a residual net under the plain name."""
    from configs.resnet20_cifar import get_config

    with pytest.raises(ConfigError, match="plain56_cifar.*shortcut=None.*shortcut='A'"):
        models.create("plain56_cifar", num_classes=10, shortcut="A")
    assert models.create("plain56_cifar", num_classes=10, shortcut=None).shortcut is None
    assert models.create("resnet56_cifar", num_classes=10, shortcut="B").shortcut == "B"
    c = get_config("digits,plain")
    assert c.model.name == "plain20_cifar" and "shortcut" not in c.model.kwargs
    plain = models.create("plain56_cifar", num_classes=10, **c.model.kwargs)
    x = jnp.ones((1, 16, 16, 3))
    variables = plain.init(jax.random.key(0), x, train=False)
    residual = models.create("resnet56_cifar", num_classes=10)
    a = plain.apply(variables, x, train=False)[0]
    b = residual.apply(variables, x, train=False)[0]
    assert not np.allclose(a, b)  # same parameters, different networks


def test_a_config_names_the_activation():
    """model.kwargs.act='tanh' (a string in a config) builds the net with tanh; an unknown name
    is an error listing the valid ones."""
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    tanh = models.create("plain20_cifar", num_classes=10, act="tanh")
    relu = models.create("plain20_cifar", num_classes=10)
    variables = relu.init(jax.random.key(1), x, train=False)
    _, feats = tanh.apply(variables, x, train=False)
    assert float(jnp.abs(feats["stem"]).max()) <= 1.0  # tanh-bounded after the stem
    assert float(jnp.min(relu.apply(variables, x, train=False)[1]["stem"])) == 0.0
    leaky = models.create("plain20_cifar", num_classes=10, act="leaky_relu")
    assert float(jnp.min(leaky.apply(variables, x, train=False)[1]["stem"])) < 0.0
    with pytest.raises(ConfigError, match="model.kwargs.act: unknown activation 'tahn'.*tanh"):
        models.create("plain20_cifar", num_classes=10, act="tahn")


def _closed_form(kernels=(3, 3), bottleneck=False, batch_norm=True, n=3, width=16, classes=10):
    """Parameters of a CIFAR ResNet with option-A shortcuts, counted layer by layer."""
    total = 3 * 3 * 3 * width + (2 * width if batch_norm else width)  # stem conv (+ BN | bias)
    cin = width
    for i in range(3):
        w = width * 2**i
        for _ in range(n):
            if bottleneck:
                layers = ((1, w), (3, w), (1, 4 * w))
            else:
                layers = tuple((k, w) for k in kernels)
            c = cin
            for k, out in layers:
                total += k * k * c * out + (2 * out if batch_norm else out)
                c = out
            cin = c
    return total + cin * classes + classes


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"kernels": (5,)}, {"kernels": (3, 3, 3)}, {"kernels": (7,)}, {"batch_norm": False},
     {"kernels": (5,), "batch_norm": False}],
)  # fmt: skip
def test_cifar_ablation_options_have_their_closed_form_counts(kwargs):
    assert count("resnet20_cifar", 16, 10, **kwargs) == _closed_form(**kwargs)
    assert _closed_form() == count("resnet20_cifar", 32, 10)  # the formula is the paper's net


def test_cifar_bottleneck_blocks_count_and_shapes():
    # depth 9n+2: resnet56_cifar with bottlenecks has n = 6 blocks per stage
    assert count("resnet56_cifar", 16, 10, bottleneck=True) == _closed_form(bottleneck=True, n=6)
    assert count("resnet56_cifar", 16, 10, bottleneck=True, width=11) == _closed_form(
        bottleneck=True, n=6, width=11
    )
    # ResNet-164 (He et al. 2016, Table 3: 1.7M parameters; theirs has pre-activation BN and
    # three projection shortcuts, ours option A)
    from cnnjax.models.resnet_cifar import CifarResNet

    net = CifarResNet(num_classes=10, depth=164, bottleneck=True)
    v = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(v["params"]))
    assert n == _closed_form(bottleneck=True, n=18) and round(n / 1e6, 1) == 1.7
    model = models.create("resnet56_cifar", num_classes=10, bottleneck=True)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    logits, feats = model.apply(variables, x, train=False)
    assert logits.shape == (2, 10)
    assert feats["stage1"].shape == (2, 16, 16, 64) and feats["stage3"].shape == (2, 4, 4, 256)


def test_cifar_without_batch_norm_has_no_batch_stats_and_trains_as_a_function():
    model = models.create("plain20_cifar", num_classes=10, batch_norm=False)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    assert "batch_stats" not in variables
    a, _ = model.apply(variables, x, train=True)
    b, _ = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(a, b)  # nothing depends on train mode
    assert "conv1" in variables["params"]["layer1_0"] and "bias" in variables["params"]["conv1"]


@pytest.mark.parametrize(
    "kwargs,match",
    [({"kernels": (4,)}, r"kernels must be a non-empty tuple of odd sizes.*\(4,\)"),
     ({"kernels": ()}, "kernels must be a non-empty tuple"),
     ({"bottleneck": True, "kernels": (5,)}, "cannot be combined with bottleneck=True"),
     ({"depth": 22}, "depth must be 6n\\+2"),
     ({"depth": 32, "bottleneck": True}, "depth must be 9n\\+2 for bottleneck blocks")],
)  # fmt: skip
def test_cifar_bad_ablation_options_name_themselves(kwargs, match):
    from cnnjax.models.resnet_cifar import CifarResNet

    with pytest.raises(ConfigError, match=match):
        CifarResNet(num_classes=10, **kwargs).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_a_registry_entry_refuses_another_depth():
    with pytest.raises(ConfigError, match="resnet20_cifar.*depth=20.*depth=56"):
        models.create("resnet20_cifar", num_classes=10, depth=56)
