"""Every config file loads, is locked, has the documented shape, and accepts :smoke."""

from pathlib import Path

import pytest

from cnnjax.errors import ConfigError
from tests.conftest import ROOT, load_config

CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("*.py"))
GROUPS = {
    "task": {"name", "kwargs"},
    "data": {"name", "batch_size", "image_size", "aug"},
    "model": {"name", "kwargs"},
    "optim": {"name", "learning_rate", "weight_decay", "schedule"},
    "train": {"num_steps", "num_epochs", "checkpoint_every_steps", "seed", "log_every_steps"},
    "eval": {"every_steps"},
}


@pytest.mark.parametrize("path", CONFIGS)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_loads_with_documented_shape(path, arg):
    config = load_config(path, arg)
    for group, keys in GROUPS.items():
        assert keys <= set(config[group].keys()), (path, group)
    with pytest.raises(AttributeError):
        config.data.not_a_key = 1  # locked: typos in overrides fail loudly


@pytest.mark.parametrize("path", CONFIGS)
def test_config_docstring_gives_the_command(path):
    text = Path(ROOT / path).read_text()
    assert "launch.sh train --config=" in text, f"{path} docstring lacks its run command"


@pytest.mark.parametrize("path", CONFIGS)
def test_unknown_config_argument_is_rejected(path):
    with pytest.raises(ConfigError, match="bogus"):
        load_config(path, "bogus")


def test_smoke_shrinks_and_arguments_combine():
    full = load_config("configs/resnet20_cifar.py")
    assert full.data.name == "cifar10" and full.train.num_steps == 64_000
    digits = load_config("configs/resnet20_cifar.py", "digits,smoke")
    assert digits.data.name == "digits" and not digits.data.aug.flip
    assert digits.train.num_steps < 10


@pytest.mark.parametrize("path", CONFIGS)
def test_every_setting_has_a_stated_domain_and_is_in_it(path):
    from cnnjax.config import validate

    config = load_config(path)
    missing = [k for k, _ in validate.leaves(config) if k not in validate.DOMAINS]
    assert missing == [], f"{path}: settings without a domain in config/validate.py"
    validate.check_values(config)


def test_a_value_outside_its_domain_is_named():
    from cnnjax.config import validate

    for key, domain in validate.DOMAINS.items():
        config = load_config("configs/resnet34.py")
        group, leaf = key.rsplit(".", 1)
        node = config
        for part in group.split("."):
            node = node[part]
        with node.ignore_type():
            node[leaf] = domain.outside
        with pytest.raises(ConfigError, match=f"^{key} must be "):
            validate.check_values(config)
