"""Every segmentation config trains and evaluates in `:smoke` mode through the engine, with
the task's metrics and a picture of its predictions."""

import pytest

from cnnjax.engine import trainer
from tests.conftest import load_config

# One segmentation config's smoke run stays in the suite (FCN-8s: the task, its metrics and
# pictures end to end); the others (~50-60 s each on 2 cores) run in CI's second stage
# (`./launch.sh test-zoo`), their models checked in the suite by tests/test_fcn.py,
# test_deconvnet.py, test_unet.py and test_deeplab.py, to keep the suite under 20 minutes.
SECOND_STAGE = pytest.mark.zoo_full
CONFIGS = [
    ("configs/fcn.py", "8s,smoke"),
    *(
        pytest.param(path, arg, marks=SECOND_STAGE, id=f"{path[8:-3]}:{arg}")
        for path, arg in (
            ("configs/fcn.py", "32s,smoke"),
            ("configs/fcn.py", "16s,smoke"),
            ("configs/deconvnet.py", "smoke"),
            ("configs/unet.py", "smoke"),
            ("configs/deeplabv3.py", "smoke"),
        )
    ),
]


def _id(case) -> str:
    return case.id if hasattr(case, "id") else f"{case[0][8:-3]}:{case[1]}"


@pytest.mark.parametrize("path,arg", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_segmentation_config_smoke_trains_and_evaluates(tmp_path, path, arg):
    config = load_config(path, arg)
    assert config.task.name == "segmentation" and config.data.name == "digits_scenes"
    metrics = trainer.train_and_evaluate(config, tmp_path)
    assert metrics["num_examples"] == config.data.max_eval_examples
    assert 0 <= metrics["miou"] <= 1 and len(metrics["per_class_iou"]) == 11
    assert (tmp_path / "samples" / f"step_{config.train.num_steps:07d}.png").exists()
