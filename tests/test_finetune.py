"""Transfer learning end to end: torchvision weights on disk -> fine-tuned cnnjax model."""

import functools
import importlib.util
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from cnnjax import convert, models
from cnnjax.config.base import base_config
from cnnjax.engine import init_from, trainer
from cnnjax.engine.checkpointing import Checkpointer
from cnnjax.engine.state import TrainState
from cnnjax.errors import ConfigError

# torch is an optional extra; `./launch.sh test` installs it, so CI runs these tests.
torch = pytest.importorskip("torch", reason="torch extra not installed (pip install -e .[torch])")
torchvision = pytest.importorskip("torchvision", reason="torch extra not installed")

_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "finetune.py"


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A seeded random-init torchvision ResNet-18 (1000 classes) saved as safetensors."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    convert.save_safetensors(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def _smoke_config():
    spec = importlib.util.spec_from_file_location("finetune_config", _CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("smoke")


def _finetune(workdir, checkpoint, *, freeze: bool) -> dict[int, dict]:
    """Trains configs/finetune.py:smoke from `checkpoint`; -> {step: flat params} on disk."""
    config = _smoke_config()
    config.init.checkpoint = str(checkpoint)
    config.init.freeze_backbone = freeze
    assert (config.data.image_size, config.data.batch_size) == (32, 16)
    trainer.train_and_evaluate(config, workdir)
    ckpt = Checkpointer(workdir / "checkpoints", keep=2, best_metric="accuracy")
    try:
        steps = ckpt.manager.all_steps()
        assert max(steps) == config.train.num_steps
        return {s: _flat(ckpt.restore_state(s, None)["params"]) for s in steps}
    finally:
        ckpt.close()


def _flat(params) -> dict[str, np.ndarray]:
    return {p: np.asarray(v) for p, v in traverse_util.flatten_dict(params, sep="/").items()}


def _pretrained_start(path) -> dict[str, np.ndarray]:
    """The backbone's first values: converted weights, RGB stem summed for grey digits."""
    flat = _flat(convert.from_torchvision("resnet18", convert.load_state_dict(path))["params"])
    flat["conv1/kernel"] = flat["conv1/kernel"].sum(axis=2, keepdims=True)
    return {p: v for p, v in flat.items() if not p.startswith("fc/")}


def _changed(a: dict, b: dict) -> list[str]:
    return sorted(p for p in a if not np.array_equal(a[p], b[p]))


def test_linear_probe_trains_only_the_head(tmp_path, resnet18_file):
    by_step = _finetune(tmp_path / "probe", resnet18_file, freeze=True)
    first, last = (by_step[s] for s in sorted(by_step)[-2:])
    start = _pretrained_start(resnet18_file)
    assert last["fc/kernel"].shape == (512, 10)
    assert _changed(start, last) == []  # bitwise: every backbone parameter as loaded
    assert _changed(first, last) == ["fc/bias", "fc/kernel"]


def test_full_finetune_changes_the_backbone(tmp_path, resnet18_file):
    by_step = _finetune(tmp_path / "full", resnet18_file, freeze=False)
    first, last = (by_step[s] for s in sorted(by_step)[-2:])
    start = _pretrained_start(resnet18_file)
    assert last["fc/kernel"].shape == (512, 10)
    assert _changed(start, last) == sorted(start)
    assert {"fc/bias", "fc/kernel"} <= set(_changed(first, last))


def _zero_state(path, num_classes=10):
    """A resnet18 train state of zeros with a `num_classes` head, without compiling a model."""
    v = convert.from_torchvision("resnet18", convert.load_state_dict(path))
    v["params"]["fc"] = {"kernel": np.ones((512, num_classes)), "bias": np.ones(num_classes)}
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), v)
    return TrainState.create(
        apply_fn=None,
        params=zeros["params"],
        batch_stats=zeros["batch_stats"],
        tx=optax.sgd(0.1),
        rng=jax.random.key(0),
    )


def _init_config(checkpoint, **init):
    c = base_config()
    c.model.name = "resnet18"
    c.init.checkpoint = str(checkpoint)
    c.init.update(init)
    return c


def test_head_mismatch_names_the_parameter(resnet18_file):
    with pytest.raises(ConfigError) as e:
        init_from.apply_init(_init_config(resnet18_file, exclude=()), _zero_state(resnet18_file))
    msg = str(e.value)
    assert "params/fc/kernel: model has (512, 10), checkpoint has (512, 1000)" in msg
    assert "params/fc/bias: model has (10,), checkpoint has (1000,)" in msg
    assert "config.init.exclude" in msg and "this model's head is 'fc'" in msg


def test_loads_by_name_and_keeps_excluded_fresh(resnet18_file):
    sd = convert.load_state_dict(resnet18_file)
    state = init_from.apply_init(
        _init_config(resnet18_file, exclude=()), _zero_state(resnet18_file, 1000)
    )
    np.testing.assert_array_equal(np.asarray(state.params["fc"]["kernel"]), sd["fc.weight"].T)
    np.testing.assert_array_equal(
        np.asarray(state.batch_stats["bn1"]["mean"]), sd["bn1.running_mean"]
    )
    state = init_from.apply_init(_init_config(resnet18_file), _zero_state(resnet18_file))
    assert not np.asarray(state.params["fc"]["kernel"]).any()  # excluded: left as it was
    np.testing.assert_array_equal(
        np.asarray(state.params["layer4_1"]["bn2"]["scale"]), sd["layer4.1.bn2.weight"]
    )


def test_weight_ema_starts_from_the_loaded_weights(resnet18_file):
    assert "ema_params" in TrainState.__dataclass_fields__
    state = _zero_state(resnet18_file)
    state = state.replace(ema_params=state.params, ema_batch_stats=state.batch_stats)
    state = init_from.apply_init(_init_config(resnet18_file), state)
    ema, params = _flat(state.ema_params), _flat(state.params)
    assert ema.keys() == params.keys() and _changed(params, ema) == []
    assert _changed(_flat(state.batch_stats), _flat(state.ema_batch_stats)) == []
    assert params["layer1_0/conv1/kernel"].any()


def test_init_is_off_by_default_and_for_old_configs(resnet18_file):
    state = _zero_state(resnet18_file)
    assert base_config().init.checkpoint == ""
    assert init_from.apply_init(base_config(), state) is state
    old = ml_collections.ConfigDict({"model": {"name": "resnet18"}})  # written before `init`
    assert init_from.apply_init(old, state) is state


def test_bad_init_values_are_named(resnet18_file, tmp_path):
    state = _zero_state(resnet18_file)
    with pytest.raises(ConfigError, match="init.source 'timm' is not one of"):
        init_from.apply_init(_init_config(resnet18_file, source="timm"), state)
    with pytest.raises(ConfigError, match="does not exist"):
        init_from.apply_init(_init_config(tmp_path / "nope.pth"), state)
    c = _init_config(resnet18_file)
    c.model.name = "resnet20_cifar"
    with pytest.raises(ConfigError, match="model 'resnet20_cifar' has no torchvision conversion"):
        init_from.apply_init(c, state)
    with pytest.raises(ConfigError, match="freeze_backbone needs init.exclude"):
        init_from.apply_init(
            _init_config(resnet18_file, exclude=(), freeze_backbone=True),
            _zero_state(resnet18_file, 1000),
        )


class _WithBackbone(nn.Module):
    """A composite: a registry backbone held as a field (params under 'backbone') + a head."""

    num_classes: int
    backbone: nn.Module = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        _, feats = self.backbone(x, train=train)
        return nn.Dense(self.num_classes, name="head")(feats["pre_logits"]), feats


def test_pretrained_backbone_loads_by_prefix_into_a_composite_and_freezes(tmp_path, resnet18_file):
    models.register(
        "test_composite",
        functools.partial(_WithBackbone, backbone=models.create("resnet18", num_classes=0)),
        replace=True,
    )
    config = _smoke_config()
    config.model.name = "test_composite"
    config.init.update(
        checkpoint=str(resnet18_file), model="resnet18", prefix="backbone", freeze_backbone=True
    )
    trainer.train_and_evaluate(config, tmp_path / "composite")
    ckpt = Checkpointer(tmp_path / "composite" / "checkpoints", create=False)
    try:
        final = _flat(ckpt.read()[1]["params"])
    finally:
        ckpt.close()
    start = _pretrained_start(resnet18_file)
    backbone = {
        p.removeprefix("backbone/"): v for p, v in final.items() if p.startswith("backbone/")
    }
    assert sorted(backbone) == sorted(start)  # the headless backbone: everything but fc
    assert _changed(start, backbone) == []  # loaded, then frozen: bitwise as converted
    assert {p for p in final if not p.startswith("backbone/")} == {"head/bias", "head/kernel"}
    bad = _init_config(resnet18_file, model="resnet18", prefix="encoder")
    bad.model.name = "test_composite"
    state = _zero_state(resnet18_file)
    with pytest.raises(ConfigError, match="init.prefix 'encoder' matches no params"):
        init_from.apply_init(bad, state)
