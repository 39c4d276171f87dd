"""torchvision -> cnnjax conversion: logits parity with torchvision, safe loading, clear errors."""

import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from cnnjax import convert, models
from cnnjax.errors import ConfigError

# torch is an optional extra; `./launch.sh test` installs it, so CI runs these tests.
torch = pytest.importorskip("torch", reason="torch extra not installed (pip install -e .[torch])")
torchvision = pytest.importorskip("torchvision", reason="torch extra not installed")

pytestmark = pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet")

# One model per distinct code path runs by default (basic/bottleneck ResNet, VGG with and
# without BN, EfficientNet's eps-1e-3 variants, ...); the other variants share that code and
# run in CI's second stage (zoo_full), and `test_every_shared_model_converts_by_shape` checks
# them all by shape here.
REPRESENTATIVE = {
    "resnet18",
    "resnet50",
    "alexnet",
    "vgg11",
    "vgg11_bn",
    "googlenet",
    "densenet121",
    "squeezenet1_0",
    "squeezenet1_1",
    "mobilenet_v2",
    "efficientnet_b0",
    "efficientnet_b5",
    "shufflenet_v2_x0_5",
}
_IMAGE_SIZE = 64  # every family runs at 64 px (VGG/AlexNet through adaptive pooling)
_BATCH = 2
_PARITY = [
    pytest.param(n, marks=() if n in REPRESENTATIVE else pytest.mark.zoo_full)
    for n in convert.names()
]


def _torch_model(name: str, seed: int = 0):
    """Seeded random torchvision model in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    tv_name = convert.rules.RULES[name].torchvision_name
    model = torchvision.models.get_model(tv_name, weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    return model


def _logits_error(name: str) -> tuple[float, float]:
    """-> (max |cnnjax - torchvision| logit difference, max |torchvision logit|)."""
    tmodel = _torch_model(name)
    x = torch.randn(_BATCH, 3, _IMAGE_SIZE, _IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = tmodel(x).numpy()
    variables = convert.from_torchvision(name, tmodel.state_dict())
    model = models.create(name, num_classes=want.shape[-1])
    x = x.numpy().transpose(0, 2, 3, 1)
    with jax.default_matmul_precision("highest"):
        # One unoptimised compile costs a fraction of eager op-by-op dispatch.
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0]).lower(variables, x)
        got = forward.compile(compiler_options={"xla_backend_optimization_level": 0})(variables, x)
    return float(np.abs(np.asarray(got) - want).max()), float(np.abs(want).max())


@pytest.mark.parametrize("name", _PARITY)
def test_logits_match_torchvision(name):
    err, scale = _logits_error(name)
    print(f"{name}: max |logit| {scale:.3g}, max abs error {err:.3g}")
    assert err <= 1e-4 * max(1.0, scale), (name, err, scale)


def _meta_shapes(name: str, **kwargs) -> dict[str, tuple[int, ...]]:
    """Shapes of a torchvision state dict, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(set(convert.names()) - REPRESENTATIVE))
def test_every_shared_model_converts_by_shape(name):
    """The variants outside the default parity run: every key placed, every shape right."""
    shapes = _meta_shapes(convert.rules.RULES[name].torchvision_name)
    plan = convert.check(name, shapes)
    tracked = {k for k in shapes if not k.endswith("num_batches_tracked")}
    assert set(plan) == tracked - {k for k in tracked if k.startswith(("aux1.", "aux2."))}


def test_googlenet_aux_heads_convert_when_the_model_has_them():
    shapes = _meta_shapes("googlenet")
    assert "aux1.fc1.weight" in shapes and "aux1.fc1.weight" not in convert.check(
        "googlenet", shapes
    )
    plan = convert.check("googlenet", shapes, aux_logits=True)
    assert plan["aux1.fc1.weight"] == "params/aux1/fc1/kernel"
    assert plan["aux2.conv.bn.running_var"] == "batch_stats/aux2/conv/bn/var"


def test_densenet_released_key_names_convert():
    """torchvision's published DenseNet files say `norm.1`/`conv.2` for `norm1`/`conv2`."""
    legacy = {
        re.sub(r"(denselayer\d+)\.(norm|conv)([12])\.", r"\1.\2.\3.", k): v
        for k, v in _meta_shapes("densenet121").items()
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    plan = convert.check("densenet121", legacy)
    assert plan["features.denseblock1.denselayer1.norm.1.weight"] == (
        "params/features_denseblock1/denselayer1/norm1/scale"
    )


def test_every_shared_model_has_a_rule():
    """Registry models that torchvision also builds must be convertible."""
    shared = set(models.names()) & set(torchvision.models.list_models(torchvision.models))
    assert shared <= set(convert.names()), sorted(shared - set(convert.names()))


def test_converted_variables_are_numpy_in_flax_layout():
    sd = _torch_model("resnet18").state_dict()
    v = convert.from_torchvision("resnet18", sd)
    assert set(v) == {"params", "batch_stats"}
    conv1 = v["params"]["conv1"]["kernel"]
    assert isinstance(conv1, np.ndarray) and conv1.shape == (7, 7, 3, 64)
    np.testing.assert_array_equal(conv1[2, 5, 1, 7], sd["conv1.weight"][7, 1, 2, 5].numpy())
    np.testing.assert_array_equal(v["params"]["fc"]["kernel"], sd["fc.weight"].numpy().T)
    np.testing.assert_array_equal(
        v["batch_stats"]["layer2_0"]["downsample_bn"]["var"],
        sd["layer2.0.downsample.1.running_var"].numpy(),
    )


def test_num_classes_follows_the_head():
    tmodel = torchvision.models.resnet18(weights=None, num_classes=7)
    v = convert.from_torchvision("resnet18", tmodel.state_dict())
    assert v["params"]["fc"]["kernel"].shape == (512, 7)


def test_mismatches_are_all_named():
    sd = dict(_torch_model("resnet18").state_dict())
    sd["layer9.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    del sd["layer1.0.bn1.running_var"]
    sd["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    with pytest.raises(convert.ConversionError) as e:
        convert.from_torchvision("resnet18", sd)
    msg = str(e.value)
    assert "1 torch keys without a flax home" in msg
    assert "layer9.0.conv1.weight -> params/layer9_0/conv1/kernel" in msg
    assert "1 flax variables not filled" in msg and "batch_stats/layer1_0/bn1/var" in msg
    assert "conv1.weight -> params/conv1/kernel: expected (7, 7, 3, 64), got (7, 7, 1, 64)" in msg


def test_head_module_is_the_flax_name_of_the_classifier():
    heads = {"resnet50": "fc", "vgg16_bn": "classifier_6", "densenet121": "classifier"}
    heads.update({"squeezenet1_1": "classifier_1", "shufflenet_v2_x1_0": "fc"})
    assert {n: convert.head_module(n) for n in heads} == heads


def test_unknown_model_lists_the_convertible_ones():
    with pytest.raises(ConfigError, match="Did you mean 'resnet50'.*resnet18"):
        convert.from_torchvision("resnet05", {})


def test_safetensors_round_trip(tmp_path):
    sd = _torch_model("resnet18").state_dict()
    path = tmp_path / "r18.safetensors"
    convert.save_safetensors(sd, path)
    loaded = convert.load_state_dict(path)
    assert loaded.keys() == sd.keys()
    for k, v in sd.items():
        np.testing.assert_array_equal(loaded[k], v.numpy(), err_msg=k)


def test_torch_file_loads_as_arrays(tmp_path):
    sd = {"fc.weight": torch.arange(6.0).reshape(2, 3), "fc.bias": torch.ones(2)}
    torch.save(sd, tmp_path / "w.pth")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    for name in ("w.pth", "wrapped.pth"):
        loaded = convert.load_state_dict(tmp_path / name)
        np.testing.assert_array_equal(loaded["fc.weight"], np.arange(6.0).reshape(2, 3))


class _Payload:
    """An arbitrary object: unpickling it would mean running code from the file."""

    def __init__(self):
        self.note = "not a tensor"


def test_loader_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": _Payload()}, path)
    with pytest.raises(ConfigError, match="refusing to load .*evil.pth.*never executes pickled"):
        convert.load_state_dict(path)


def test_loader_rejects_non_tensor_entries_and_unknown_files(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(ConfigError, match=r"not a plain state dict: entries \['epoch'\]"):
        convert.load_state_dict(tmp_path / "mixed.pth")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="neither a safetensors file nor a torch checkpoint"):
        convert.load_state_dict(tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        convert.load_state_dict(tmp_path / "missing.safetensors")


def test_conversion_works_without_torch(tmp_path):
    """cnnjax must not need torch: block it and convert from a safetensors file."""
    path = tmp_path / "r18.safetensors"
    convert.save_safetensors(torchvision.models.resnet18(weights=None).state_dict(), path)
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "from cnnjax import convert\nfrom cnnjax.engine import init_from, trainer\n"
        f"v = convert.from_torchvision('resnet18', convert.load_state_dict({str(path)!r}))\n"
        "assert v['params']['fc']['kernel'].shape == (512, 1000)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
