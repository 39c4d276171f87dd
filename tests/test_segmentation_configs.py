"""Every segmentation config trains and evaluates in `:smoke` mode through the engine, with
the task's metrics and a picture of its predictions."""

import pytest

from cnnjax.engine import trainer
from tests.conftest import load_config

CONFIGS = [
    ("configs/fcn.py", "32s,smoke"),
    ("configs/fcn.py", "16s,smoke"),
    ("configs/fcn.py", "8s,smoke"),
    ("configs/deconvnet.py", "smoke"),
    ("configs/unet.py", "smoke"),
    ("configs/deeplabv3.py", "smoke"),
]


@pytest.mark.parametrize("path,arg", CONFIGS, ids=[f"{p[8:-3]}:{a}" for p, a in CONFIGS])
def test_segmentation_config_smoke_trains_and_evaluates(tmp_path, path, arg):
    config = load_config(path, arg)
    assert config.task.name == "segmentation" and config.data.name == "digits_scenes"
    metrics = trainer.train_and_evaluate(config, tmp_path)
    assert metrics["num_examples"] == config.data.max_eval_examples
    assert 0 <= metrics["miou"] <= 1 and len(metrics["per_class_iou"]) == 11
    assert (tmp_path / "samples" / f"step_{config.train.num_steps:07d}.png").exists()
