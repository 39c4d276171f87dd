"""Class subsets (`data.classes`) and starting a run from another cnnjax run's checkpoint
(`init.source = 'cnnjax'`): the transfer experiment's two pieces, end to end on digits."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

from cnnjax.config.base import base_config
from cnnjax.data import open_sources
from cnnjax.data.subset import Subset, labels_of
from cnnjax.engine import init_from, trainer
from cnnjax.engine.checkpointing import Checkpointer
from cnnjax.errors import ConfigError

_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "resnet20_cifar.py"


def _data(classes):
    c = base_config()
    c.data.classes = classes
    return c.data


def test_classes_keep_only_those_records_of_both_splits():
    full_train, full_eval, full_info = open_sources(_data(()))
    train, evals, info = open_sources(_data((7, 5, 9)))
    assert isinstance(train, Subset) and isinstance(evals, Subset)
    for part, whole in ((train, full_train), (evals, full_eval)):
        all_labels = labels_of(whole)
        assert set(labels_of(part)) == {5, 7, 9}
        assert len(part) == int(np.isin(all_labels, (5, 7, 9)).sum())
        # records are the originals, in their order
        first = int(np.flatnonzero(np.isin(all_labels, (5, 7, 9)))[0])
        np.testing.assert_array_equal(part[0]["image"], whole[first]["image"])
    assert (info.num_train, info.num_eval) == (len(train), len(evals))
    assert info.num_classes == full_info.num_classes == 10  # labels keep their values


@pytest.mark.parametrize(
    "classes, words",
    [((3, 10), "[10] outside the dataset's classes [0, 10)"), ((2, 2), "repeats a class")],
)
def test_bad_classes_are_named(classes, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace(")", r"\)")):
        open_sources(_data(classes))


def _config(workdir_classes, **overrides):
    spec = importlib.util.spec_from_file_location("r20_config", _CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("digits,smoke")
    c.data.image_size = 16
    c.data.classes = workdir_classes
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def _params(workdir) -> dict[str, np.ndarray]:
    ckpt = Checkpointer(Path(workdir) / "checkpoints", create=False)
    try:
        state = ckpt.read()[1]
    finally:
        ckpt.close()
    flat = traverse_util.flatten_dict(state["params"], sep="/")
    return {p: np.asarray(v) for p, v in flat.items()}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A ResNet-20 smoke run trained on digits 0-4 only."""
    workdir = tmp_path_factory.mktemp("transfer") / "pretrain"
    trainer.train_and_evaluate(_config((0, 1, 2, 3, 4)), workdir)
    return workdir


def test_linear_probe_from_a_cnnjax_run_trains_only_the_head(tmp_path, pretrained):
    config = _config(
        (5, 6, 7, 8, 9),
        **{"init.checkpoint": str(pretrained), "init.source": "cnnjax",
           "init.freeze_backbone": True},
    )  # fmt: skip
    trainer.train_and_evaluate(config, tmp_path / "probe")
    before, after = _params(pretrained), _params(tmp_path / "probe")
    changed = sorted(p for p in before if not np.array_equal(before[p], after[p]))
    assert changed == ["fc/bias", "fc/kernel"]  # every backbone parameter bitwise as loaded


def test_finetune_from_a_cnnjax_run_starts_from_its_weights(tmp_path, pretrained, capsys):
    config = _config(
        (5, 6, 7, 8, 9),
        **{"init.checkpoint": str(pretrained), "init.source": "cnnjax",
           "optim.learning_rate": 1e-9, "optim.weight_decay": 0.0, "optim.momentum": 0.0},
    )  # fmt: skip
    trainer.train_and_evaluate(config, tmp_path / "finetune")
    assert f"init: {pretrained} at step 4" in capsys.readouterr().out
    before, after = _params(pretrained), _params(tmp_path / "finetune")
    for p in before:
        if not p.startswith("fc/"):  # a 1e-9 learning rate: the backbone stays where it began
            np.testing.assert_allclose(after[p], before[p], atol=1e-6, err_msg=p)


def test_a_cnnjax_start_that_does_not_fit_names_the_parameters(tmp_path, pretrained):
    config = _config(
        (), **{"init.checkpoint": str(pretrained), "init.source": "cnnjax", "init.exclude": ()}
    )
    config.model.name = "resnet32_cifar"  # more blocks than the checkpoint has
    with pytest.raises(ConfigError, match="layer1_3.*not in the checkpoint"):
        trainer.train_and_evaluate(config, tmp_path / "bad")


@pytest.mark.parametrize("make, words", [(False, "not a cnnjax run directory"),
                                         (True, "holds no checkpoint yet")])  # fmt: skip
def test_a_cnnjax_start_needs_a_trained_run(tmp_path, make, words):
    if make:
        (tmp_path / "config.json").write_text("{}")
    config = _config((), **{"init.checkpoint": str(tmp_path), "init.source": "cnnjax"})
    with pytest.raises(ConfigError, match=words):
        init_from.check(config)
