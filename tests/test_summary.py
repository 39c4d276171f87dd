"""cnnjax.analysis.arithmetic and `python -m cnnjax.summary`: MACs against torchvision,
hand-computed layers, receptive fields through branches, XLA's flop count, and the course's
comparisons."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from cnnjax import models
from cnnjax.analysis import arithmetic
from cnnjax.errors import ConfigError
from cnnjax.ops import shapes

# torchvision weight metadata, 224 px, 1000 classes: "GFLOPS" there counts MACs.
TORCHVISION_GMACS = {
    "resnet18": 1.814,
    "resnet34": 3.664,
    "resnet50": 4.089,
    "resnet101": 7.801,
    "resnet152": 11.514,
    "alexnet": 0.714,
    "vgg11": 7.609,
    "vgg13": 11.308,
    "vgg16": 15.470,
    "vgg19": 19.632,
    "vgg11_bn": 7.609,
    "vgg13_bn": 11.308,
    "vgg16_bn": 15.470,
    "vgg19_bn": 19.632,
    "googlenet": 1.498,
    "densenet121": 2.834,
    "densenet169": 3.360,
    "densenet201": 4.291,
    "mobilenet_v2": 0.301,
    "efficientnet_b0": 0.386,
    "squeezenet1_0": 0.819,
    "squeezenet1_1": 0.349,
    "shufflenet_v2_x1_0": 0.145,
}
RESNET50_PARAMS = 25_557_032  # torchvision
# ResNet-20 on 32x32 CIFAR by hand: stem 32*32*16*27 = 442,368; stage 1, six 3x3 16->16 convs
# at 32x32: 6*1024*16*144 = 14,155,776; stage 2, 16->32 at 16x16: 256*32*144 = 1,179,648 plus
# five 32->32: 5*256*32*288 = 11,796,480; stage 3 the same at 8x8 with 64 channels:
# 1,179,648 + 11,796,480; head 64*10 = 640.
RESNET20_MACS = 40_551_040
RESNET20_PARAMS = 269_722
ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnjax.summary", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("name,gmacs", sorted(TORCHVISION_GMACS.items()))
def test_macs_match_torchvision(name, gmacs):
    assert name in models.names(), f"'{name}' (torchvision lists its GMACs) is not registered"
    s = arithmetic.analyze(name)
    assert s.macs / 1e9 == pytest.approx(gmacs, rel=0.01)
    assert sum(layer.params for layer in s.layers) == s.params  # every weight sits in a layer


def test_params_equal_the_models_own_count():
    model = models.create("resnet50", num_classes=1000)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    own = sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))
    assert arithmetic.analyze("resnet50").params == own == RESNET50_PARAMS


def test_cifar_resnet20_by_hand():
    s = arithmetic.analyze("resnet20_cifar", (32, 32, 3), num_classes=10)
    assert s.macs == RESNET20_MACS
    assert s.params == RESNET20_PARAMS
    # The longest path: 3x3 stem, 6 convs at jump 1, stride-2 conv + 5 at jump 2, then at 4.
    chain = [(3, 1, 1)] * 7 + [(3, 2, 1)] + [(3, 1, 1)] * 5 + [(3, 2, 1)] + [(3, 1, 1)] * 5
    assert shapes.receptive_field(chain)[-1] == (81, 4)
    assert s.receptive_field == 81
    by_name = {layer.name: layer for layer in s.layers}
    assert by_name["fc"].macs == 640 and by_name["fc"].output_shape == (1, 10)
    assert by_name["layer3_0/conv1"].output_shape == (1, 8, 8, 64)


def test_resnet18_layers_pooling_and_shortcut_fields():
    s = arithmetic.analyze("resnet18")
    assert [layer.name for layer in s.layers[:4]] == ["conv1", "bn1", "max_pool", "layer1_0/conv1"]
    by_name = {layer.name: layer for layer in s.layers}
    conv1 = by_name["conv1"]
    assert (conv1.kind, conv1.output_shape, conv1.params, conv1.macs) == (
        "Conv",
        (1, 112, 112, 64),
        9408,
        118_013_952,
    )
    assert (conv1.kernel, conv1.stride, conv1.padding) == ((7, 7), (2, 2), ((3, 3), (3, 3)))
    assert (conv1.receptive_field, conv1.jump) == (7, 2)
    pool = by_name["max_pool"]
    assert (pool.kind, pool.output_shape, pool.kernel, pool.stride) == (
        "max_pool",
        (1, 56, 56, 64),
        (3, 3),
        (2, 2),
    )
    assert (pool.receptive_field, pool.jump, pool.macs, pool.params) == (11, 4, 0, 0)
    # The projection shortcut sees the block input (rf 43), not the main path's conv1 (rf 51).
    assert by_name["layer1_1/conv2"].receptive_field == 43
    assert by_name["layer2_0/conv1"].receptive_field == 51
    assert (
        by_name["layer2_0/downsample_conv"].receptive_field,
        by_name["layer2_0/downsample_conv"].jump,
    ) == (43, 8)
    chain = [(7, 2, 1), (3, 2, 1)] + [(3, 1, 1)] * 4
    for _ in range(3):
        chain += [(3, 2, 1)] + [(3, 1, 1)] * 3
    assert s.receptive_field == shapes.receptive_field(chain)[-1][0] == 435
    assert by_name["global_avg_pool"].output_shape == (1, 512)
    assert (by_name["fc"].params, by_name["fc"].macs) == (513_000, 512_000)
    assert (
        s.activation_bytes
        == s.activation_bytes_float32
        == sum(math.prod(layer.output_shape) * 4 for layer in s.layers)
    )


class Branches(nn.Module):
    """Branch b runs after branch a but reads only x: call order alone would mislead."""

    @nn.compact
    def __call__(self, x):
        a = nn.Conv(4, (3, 3), padding=1, name="a1")(x)
        a = nn.Conv(4, (3, 3), padding=1, name="a2")(nn.relu(a))
        b = nn.Conv(4, (1, 1), name="b1")(x)
        b = nn.Conv(4, (3, 3), padding=1, name="b2")(nn.relu(b))
        return nn.Conv(4, (1, 1), name="merge")(jnp.concatenate([a, b], axis=-1))


def test_receptive_fields_follow_the_dataflow_through_branches():
    s = arithmetic.analyze(Branches(), (16, 16, 3))
    assert {la.name: la.receptive_field for la in s.layers} == {
        "a1": 3,
        "a2": 5,
        "b1": 1,
        "b2": 3,
        "merge": 5,
    }


class Pools(nn.Module):
    """Pooling by three routes, none of them a module, then global average pooling."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        x = nn.avg_pool(x, (2, 2), (2, 2), count_include_pad=False)
        x = jax.lax.reduce_window(x, 0.0, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "VALID")
        return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


def test_pooling_functions_are_layers():
    s = arithmetic.analyze(Pools(), (16, 16, 4))
    got = [(la.name, la.output_shape[1:], la.receptive_field, la.jump) for la in s.layers]
    assert got == [
        ("max_pool", (8, 8, 4), 3, 2),  # 3x3/2
        ("avg_pool", (4, 4, 4), 5, 4),  # 3 + (2 - 1) * 2
        ("max_pool_1", (2, 2, 4), 13, 4),  # a generic reduce_window with a max reducer
        ("global_avg_pool", (4,), 13, 4),
        ("Dense_0", (3,), 13, 4),
    ]
    assert s.params == s.layers[-1].params == 4 * 3 + 3


class ConvVariants(nn.Module):
    @nn.compact
    def __call__(self, x):  # x: [1, 16, 16, 8]
        x = nn.Conv(16, (3, 3), strides=2, padding="SAME", name="strided")(x)
        x = nn.Conv(16, (3, 3), padding=1, feature_group_count=4, name="grouped")(x)
        x = nn.Conv(16, (3, 3), padding=2, kernel_dilation=2, name="dilated")(x)
        x = nn.ConvTranspose(4, (3, 3), strides=(2, 2), name="up")(x)
        return nn.Dense(10, name="fc")(x.reshape(1, -1))


def test_conv_variants_by_hand():
    s = arithmetic.analyze(ConvVariants(), (16, 16, 8))
    rows = {
        la.name: (la.output_shape[1:], la.params, la.macs, la.receptive_field, la.jump)
        for la in s.layers
    }
    assert rows == {
        # 8*8*16*(9*8); 9*8*16 + 16; rf 3, jump 2
        "strided": ((8, 8, 16), 1168, 73_728, 3, 2),
        # 8*8*16*(9*16/4); 9*4*16 + 16; 3 + 2*2
        "grouped": ((8, 8, 16), 592, 36_864, 7, 2),
        # K_eff 5: 7 + 4*2; 8*8*16*(9*16)
        "dilated": ((8, 8, 16), 2320, 147_456, 15, 2),
        # transposed, counted on its input: 8*8*4*(9*16); 9*16*4 + 4; 15 + floor(2/2)*2, jump 1
        "up": ((16, 16, 4), 580, 36_864, 17, 1),
        # the dense layer reads the flattened 16x16 map: all of it, 17 + (16 - 1) * 1
        "fc": ((10,), 10_250, 10_240, 32, 1),
    }
    grouped = next(la for la in s.layers if la.name == "grouped")
    assert (grouped.groups, grouped.padding) == (4, ((1, 1), (1, 1)))
    assert next(la for la in s.layers if la.name == "dilated").dilation == (2, 2)


def test_bfloat16_halves_activation_bytes():
    f32 = arithmetic.analyze("resnet20_cifar", (32, 32, 3), num_classes=10)
    bf16 = arithmetic.analyze("resnet20_cifar", (32, 32, 3), num_classes=10, dtype=jnp.bfloat16)
    assert bf16.dtype == "bfloat16" and bf16.macs == f32.macs
    assert bf16.activation_bytes_float32 == f32.activation_bytes
    wide = [la.name for la in bf16.layers if la.activation_bytes * 2 != la.activation_bytes_float32]
    assert wide == ["global_avg_pool"]  # jnp.mean sums bfloat16 in float32
    assert f32.layers[0].activation_bytes == 32 * 32 * 16 * 4


class OneConv(nn.Module):
    padding: str

    @nn.compact
    def __call__(self, x):
        return nn.Conv(16, (3, 3), padding=self.padding, use_bias=False)(x)


def test_xla_counts_two_flops_per_mac_that_touches_real_input():
    valid = arithmetic.analyze(OneConv("VALID"), (32, 32, 16), xla=True)
    assert valid.xla_flops == 2 * valid.macs == 2 * 30 * 30 * 16 * 144
    same = arithmetic.analyze(OneConv("SAME"), (32, 32, 16), xla=True)
    # Per axis, 3 taps at 32 positions less the 2 that fall on padding: 94 of 96.
    assert same.xla_flops == pytest.approx(2 * same.macs * (94 / 96) ** 2, rel=1e-9)


def test_bad_input_is_reported():
    with pytest.raises(ConfigError, match="Did you mean 'resnet50'"):
        arithmetic.analyze("resnet5")
    with pytest.raises(ValueError, match=r"input_shape must be positive ints"):
        arithmetic.analyze("resnet18", (0, 224, 3))


def test_cli_json_is_the_last_line():
    res = run_cli("--model=resnet20_cifar", "--image_size=32", "--num_classes=10", "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout.strip().splitlines()[-1])
    assert (d["params"], d["macs"]) == (RESNET20_PARAMS, RESNET20_MACS)
    assert d["activation_bytes"] > 0 and d["receptive_field"] == 81
    first = d["layers"][0]
    assert {k: first[k] for k in ("name", "output_shape", "params", "macs", "receptive_field")} == {
        "name": "conv1",
        "output_shape": [1, 32, 32, 16],
        "params": 432,
        "macs": 442_368,
        "receptive_field": 3,
    }
    # Padding taps that XLA skips outweigh its elementwise ops on these small maps.
    assert 0.9 < d["xla_flops"] / (2 * d["macs"]) < 1.0


def test_cli_table_and_errors():
    res = run_cli("--model=resnet20_cifar", "--image_size=32", "--num_classes=10", "--noxla")
    assert res.returncode == 0, res.stderr
    assert "layer3_2/conv2" in res.stdout and "40,551,040" in res.stdout
    bad = run_cli("--model=resnet5")
    assert bad.returncode == 2 and "Did you mean 'resnet50'" in bad.stderr
    bad = run_cli("--model=resnet18", "--dtype=float16")
    assert bad.returncode == 2 and "float32|bfloat16" in bad.stderr


def _experiment():
    spec = importlib.util.spec_from_file_location(
        "conv_arithmetic", ROOT / "experiments" / "conv_arithmetic.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_course_comparisons():
    experiment = _experiment()
    rows = experiment.rows()
    got = {
        (r["comparison"], r["design"]): (r["receptive_field"], r["params"], r["macs"]) for r in rows
    }
    c = 64
    assert got["two 3x3 vs one 5x5", "3x3 -> 3x3"][:2] == (5, 18 * c * c)
    assert got["two 3x3 vs one 5x5", "5x5"][:2] == (5, 25 * c * c)
    assert got["three 3x3 vs one 7x7 (VGG)", "3x3 -> 3x3 -> 3x3"][:2] == (7, 27 * c * c)
    assert got["three 3x3 vs one 7x7 (VGG)", "7x7"][:2] == (7, 49 * c * c)
    bottleneck = got["ResNet bottleneck at 256 channels", "1x1 to 64 -> 3x3 -> 1x1 to 256"]
    assert bottleneck[:2] == (3, 256 * 64 + 9 * 64 * 64 + 64 * 256)
    assert got["ResNet bottleneck at 256 channels", "3x3 -> 3x3"][:2] == (5, 2 * 9 * 256 * 256)
    # 28x28x192 -> 32 maps: 120M MACs directly, 12.4M through a 16-map 1x1 reduction.
    assert got["GoogLeNet 1x1 reduction, 28x28x192 -> 32", "5x5"][2] == 120_422_400
    reduced = got["GoogLeNet 1x1 reduction, 28x28x192 -> 32", "1x1 to 16 -> 5x5"]
    assert reduced[2] == 28 * 28 * 16 * 192 + 28 * 28 * 32 * 25 * 16 == 12_443_648
    depthwise = got["MobileNet depthwise separable at 256", "3x3 depthwise -> 1x1"]
    assert depthwise[1] == 9 * 256 + 256 * 256
    table = experiment.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "| 120,422,400 |" in table


def test_a_dense_layer_after_a_flatten_sees_the_whole_input():
    """LeNet-5's fc1-fc3 read the flattened 5x5x16 map: every one of them sees all 32 px
    (16 px is one position's field; + 4 more positions x jump 4 = 32)."""
    s = arithmetic.analyze("lenet5", (32, 32, 1), num_classes=10)
    rf = {la.name: la.receptive_field for la in s.layers}
    assert rf["avg_pool_1"] == 16
    assert rf["fc1"] == rf["fc2"] == rf["fc3"] == 32 == s.receptive_field
