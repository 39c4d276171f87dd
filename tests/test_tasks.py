"""The task interface: a toy task defined here trains, resumes bitwise, evaluates and loads
through the one engine; exact accumulation with per-example denominators; task/dataset
mismatches are clear errors; the engine, CLIs and tools name no task."""

import dataclasses
import functools
import re
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cnnjax
from cnnjax import models, tasks
from cnnjax.config import base as configlib
from cnnjax.data import transforms as T
from cnnjax.data.features import Feature, pad_example, synthetic_batch
from cnnjax.data.sources import DataInfo, FeatureInfo
from cnnjax.engine import step as engine_step
from cnnjax.engine import trainer
from cnnjax.engine.state import create_state
from cnnjax.errors import ConfigError
from cnnjax.logs.writers import read_metrics
from cnnjax.metrics.accumulate import MaskedSums
from cnnjax.tasks.base import Loss, Task, apply_model
from cnnjax.tools import chaos
from tests.conftest import ROOT, run_cli


class TinyRegressor(nn.Module):
    """conv -> BN -> mean -> dense: one output per image."""

    num_classes: int = 1
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        return nn.Dense(self.num_classes)(x.mean((1, 2))), {"stride1": x}


@dataclasses.dataclass
class Values:
    value: np.ndarray  # [N] float32


class BrightnessMetrics(MaskedSums):
    def result(self) -> dict:
        return {"mse": self.mean("sq"), "mae": self.mean("abs"), "num_examples": self.count}


@dataclasses.dataclass(frozen=True)
class Brightness(Task):
    """Regress each image's mean intensity; an example weighs 1 + its number of bright
    pixels, so the loss's denominator is not the example count."""

    scale: float = 1.0

    name: ClassVar[str] = "test_brightness"
    METRICS: ClassVar[dict] = {"mae": "min", "mse": "min"}
    best_metric: ClassVar[str] = "mae"
    progress_keys: ClassVar[tuple] = ("loss", "abs_err")
    Prediction: ClassVar[type] = Values

    @classmethod
    def check_info(cls, info):
        if info.image_shape is None:
            raise ConfigError("test_brightness needs images")

    def features(self):
        c = self.info.image_shape[-1]
        return {
            "image": Feature((self.image_size, self.image_size, c), "float32"),
            "target": Feature((), "float32"),
            "weight": Feature((), "float32"),
        }

    def preprocess(self, record, rng):
        image = T.to_float(T.center_crop_resize(record["image"], self.image_size))
        if rng is not None:
            image = T.augment_image(image, self.augment, rng)
        return {
            "image": image,
            "target": np.float32(image.mean() * self.scale),
            "weight": np.float32(1 + (image > 0.5).sum()),
        }

    def model_kwargs(self):
        return {"num_classes": 1}

    def loss(self, apply_fn, variables, batch, rng):
        (out, _), updates = apply_model(apply_fn, variables, batch["image"], train=True, rng=rng)
        err = out[:, 0] - batch["target"]
        w = batch["weight"] * batch["mask"]
        terms = {"abs_err": ((jnp.abs(err) * batch["mask"]).sum(), batch["mask"].sum())}
        return Loss((w * err**2).sum(), w.sum(), terms, updates)

    def eval_outputs(self, apply_fn, variables, batch):
        (out, _), _ = apply_model(apply_fn, variables, batch["image"], train=False)
        err = out[:, 0] - batch["target"]
        return {"sq": err**2, "abs": jnp.abs(err), "mask": batch["mask"]}

    def metric(self):
        return BrightnessMetrics()

    def predict(self, apply_fn, variables, batch):
        (out, _), _ = apply_model(apply_fn, variables, batch["image"], train=False)
        return {"value": out[:, 0]}

    def visualize(self, batch, prediction):
        from cnnjax.tasks import plots

        fig, axes = plots.figure(1, len(batch["image"]))
        for ax, im, v in zip(axes[0], batch["image"], prediction.value, strict=True):
            plots.show_image(ax, im, f"{v:.2f}")
        return fig


@pytest.fixture(scope="module", autouse=True)
def _registered():
    tasks.register(Brightness, replace=True)
    models.register("test_regressor", TinyRegressor, replace=True)


def _config(steps: int, **task_kwargs):
    c = configlib.base_config()
    configlib.set_task(c, "test_brightness", **task_kwargs)
    c.model.name = "test_regressor"
    c.data.image_size = 8
    c.data.batch_size = 16
    c.data.aug.crop_padding = 1
    c.data.max_eval_examples = 40
    c.optim.name = "adamw"
    c.optim.learning_rate = 1e-2
    c.optim.schedule = "constant"  # the same at step 3 of a 3-step and of a 6-step run
    c.train.num_steps = steps
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = 3
    c.train.record_log = True
    c.eval.every_steps = 3
    return c


def test_toy_task_trains_resumes_bitwise_evaluates_and_loads(tmp_path):
    whole = trainer.train_and_evaluate(_config(6), tmp_path / "whole")
    assert set(whole) == {"mse", "mae", "num_examples"} and whole["num_examples"] == 40
    trainer.train_and_evaluate(_config(3), tmp_path / "split")
    resumed = trainer.train_and_evaluate(_config(6), tmp_path / "split")  # resumes at 3
    assert chaos.differences(tmp_path / "whole", tmp_path / "split") == []
    assert resumed == whole
    rows = [r for r in read_metrics(tmp_path / "whole") if r["split"] == "train"]
    assert {"loss", "abs_err", "grad_norm"} <= set(rows[0]) and not any(
        "weight/" in k for k in rows[0]
    )
    assert (tmp_path / "whole" / "samples" / "step_0000006.png").stat().st_size > 1000
    run = cnnjax.load(tmp_path / "whole")
    images = np.zeros((3, 8, 8, 1), np.uint8)
    pred = run.predict(images)
    assert isinstance(pred, Values) and pred.value.shape == (3,)
    # The kept best checkpoint is by the task's metric and direction (mae, lower is better).
    assert trainer.build(_config(6)).best == ("mae", "min")


def test_micro_batches_accumulate_exactly_with_per_example_denominators():
    task = tasks.create("test_brightness", DataInfo.synthetic((8, 8, 1), None), image_size=8)
    model = TinyRegressor(batch_norm=False)  # BN would normalise each micro-batch on its own
    batch = synthetic_batch(task.features(), 8, seed=3)
    batch["weight"] = np.arange(1, 9, dtype=np.float32) ** 2  # very unequal denominators
    batch["mask"][-1] = 0.0
    state = create_state(model, optax.sgd(0.1), jax.random.key(0), task.init_inputs())
    step = functools.partial(engine_step.train_step, task=task)
    whole, m1 = jax.jit(step)(state, batch)
    accum, m4 = jax.jit(functools.partial(step, grad_accum_steps=4))(state, batch)
    w = batch["weight"] * batch["mask"]
    assert float(m1["weight/loss"]) == float(m4["weight/loss"]) == w.sum()
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    # The loss is sum(w * err^2) / sum(w) over the whole batch, by hand:
    (out, _) = model.apply({"params": state.params}, batch["image"])
    err = np.asarray(out[:, 0]) - batch["target"]
    np.testing.assert_allclose(m1["loss"], (w * err**2).sum() / w.sum(), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(accum.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_log_windows_weigh_each_step_by_its_count():
    steps = [{"loss": 1.0, "weight/loss": 3.0, "grad_norm": 2.0},
             {"loss": 4.0, "weight/loss": 1.0, "grad_norm": 4.0}]  # fmt: skip
    out = trainer.window_metrics(steps)
    assert out == {"loss": (1.0 * 3 + 4.0) / 4, "grad_norm": 3.0}


def test_feature_spec_drives_padding_and_synthetic_batches():
    spec = {
        "image": Feature((4, 4, 1), "float32"),
        "boxes": Feature((3, 4), "float32"),
        "segmentation": Feature((4, 4), "int32", pad=255, low=0, high=11),
        "label": Feature((), "int32", 0, 0, 10),
    }
    pad = pad_example(spec)
    assert pad["index"] == -1 and pad["mask"] == 0 and (pad["segmentation"] == 255).all()
    batch = synthetic_batch(spec, 5)
    assert batch["segmentation"].max() < 11 and batch["label"].dtype == np.int32
    b = batch["boxes"]
    assert (b[..., 2] >= b[..., 0]).all() and (b[..., 3] >= b[..., 1]).all() and b.max() <= 1
    from cnnjax.data.features import check_example

    with pytest.raises(
        ValueError, match=r"record 9: 'label' is int64 \(\), the task expects int32"
    ):
        check_example(spec, {**{k: v[0] for k, v in batch.items()}, "label": np.int64(1)}, 9)


def test_task_and_dataset_that_do_not_fit_are_config_errors():
    no_label = DataInfo.synthetic((8, 8, 1), None)
    with pytest.raises(ConfigError, match="task 'classification' needs a class 'label'"):
        tasks.create("classification", no_label, image_size=8)
    boxes_only = DataInfo(
        "boxes", 1, 1, {"boxes": FeatureInfo((None, 4), "float32")}, (0.5,), (0.25,)
    )
    with pytest.raises(ConfigError, match="task 'reconstruction' needs images"):
        tasks.create("reconstruction", boxes_only, image_size=8)
    with pytest.raises(
        ConfigError, match="unknown task 'clasification'. Did you mean 'classification'"
    ):
        tasks.create("clasification", no_label, image_size=8)
    with pytest.raises(ConfigError, match=r"task 'reconstruction' has no option\(s\) \['foo'\]"):
        tasks.create("reconstruction", no_label, image_size=8, foo=1)
    with pytest.raises(ConfigError, match="reconstruction_loss 'l1' is not one of"):
        tasks.create("reconstruction", no_label, image_size=8, reconstruction_loss="l1")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["--config.task.name=clasification"], "unknown task 'clasification'. Did you mean"),
        (["--config.data.name=digits_scenes"], "task 'classification' needs a class 'label'"),
        (["--config.eval.best_metric=psnr"], "eval.best_metric 'psnr' is not a metric of task"),
    ],
)
def test_bad_task_settings_exit_2_before_compiling(tmp_path, overrides, message):
    proc = run_cli("cnnjax.train", "--config=configs/resnet20_cifar.py:digits,smoke",
                   f"--workdir={tmp_path / 'w'}", *overrides)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert not (tmp_path / "w").exists()


def test_a_workdir_of_another_task_is_refused_untouched(tmp_path):
    workdir = tmp_path / "ae"
    done = run_cli("cnnjax.train", "--config=configs/autoencoder.py:smoke", f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr[-2000:]
    before = sorted((p.name, p.stat().st_mtime_ns) for p in workdir.rglob("*"))
    proc = run_cli("cnnjax.train", "--config=configs/resnet20_cifar.py:digits,smoke",
                   f"--workdir={workdir}")  # fmt: skip
    assert proc.returncode == 2
    assert "task.name: 'reconstruction' -> 'classification'" in proc.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in workdir.rglob("*")) == before


ENGINE_FILES = ["cnnjax/engine", "cnnjax/train.py", "cnnjax/evaluate.py", "cnnjax/notebook.py",
                "cnnjax/tools"]  # fmt: skip


def test_no_task_is_imported_by_name_in_the_engine_clis_load_or_tools():
    named = re.compile(r"tasks\.(classification|reconstruction)|tasks import (classification|"
                       r"reconstruction)|Classification\b|Reconstruction\b")  # fmt: skip
    files = [p for f in ENGINE_FILES for p in sorted((ROOT / f).rglob("*.py")) or [ROOT / f]]
    assert len(files) > 8
    offenders = [str(p.relative_to(ROOT)) for p in files if named.search(p.read_text())]
    assert offenders == []


def test_classification_mixup_trains_on_the_mixed_targets():
    """With batch mixup the device stage adds soft `targets` (rows summing to 1, mixing each
    label with its partner's) and the loss is their cross-entropy, not the labels'."""
    from cnnjax.losses.classification import soft_cross_entropy

    info = DataInfo.synthetic((8, 8, 1), 4)
    task = tasks.create("classification", info, image_size=8,
                        augment=T.Augment(mixup_alpha=0.4))  # fmt: skip
    batch = synthetic_batch(task.features(), 6, seed=1)
    assert batch["image"].dtype == np.uint8  # the host batch
    out = task.device_preprocess(batch, jax.random.key(3))
    targets = np.asarray(out["targets"])
    np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
    lam = targets[np.arange(6), batch["label"]].min()
    assert 0 < lam < 1 or np.any(batch["label"] == batch["label"][::-1])
    model = models.create("lenet5", num_classes=4)
    variables = model.init(jax.random.key(0), out["image"][:1])
    loss = task.loss(model.apply, variables, out, jax.random.key(0))
    (logits, _), _ = apply_model(model.apply, variables, out["image"], train=True,
                                 rng=jax.random.key(0))  # fmt: skip
    want = soft_cross_entropy(logits, out["targets"]).sum()
    np.testing.assert_allclose(float(loss.numerator), float(want), rtol=1e-5)
    assert float(loss.denominator) == 6


def test_tasks_that_do_not_mix_refuse_mixup_and_cutmix():
    info = DataInfo.synthetic((16, 16, 1), None, segmentation=FeatureInfo((16, 16), "uint8", 3))
    for field in ("mixup_alpha", "cutmix_alpha"):
        with pytest.raises(ConfigError, match=f"{field}.*task 'segmentation' does not mix"):
            tasks.create("segmentation", info, image_size=16, augment=T.Augment(**{field: 0.2}))


def test_classification_host_batches_stored_pixels_or_resizes_varying_ones():
    """Square stored images of one size are batched as stored (the device resizes); varying
    ones, and notebook images of another size, are centre-cropped and resized on the host."""
    fixed = tasks.create("classification", DataInfo.synthetic((8, 8, 1), 10), image_size=32)
    assert fixed.features()["image"].shape == (8, 8, 1)
    rec = {"image": np.full((8, 8, 1), 7, np.uint8), "label": 3, "index": 0}
    np.testing.assert_array_equal(fixed.eval_preprocess(rec)["image"], rec["image"])
    other = fixed.eval_preprocess({"image": np.zeros((20, 30, 1), np.uint8), "index": 1})
    assert other["image"].shape == (8, 8, 1) and other["image"].dtype == np.uint8
    varying = tasks.create("classification", DataInfo.synthetic((None, None, 3), 10),
                           image_size=24)  # fmt: skip
    assert varying.features()["image"].shape == (24, 24, 3)
    ex = varying.eval_preprocess({"image": np.zeros((40, 60, 3), np.uint8), "index": 2})
    assert ex["image"].shape == (24, 24, 3)
    inputs = fixed.device_preprocess({"image": rec["image"][None], "label": np.array([3])}, None)
    assert inputs["image"].shape == (1, 32, 32, 1) and inputs["image"].dtype == np.float32
