"""The reconstruction task (autoencoders): losses and PSNR by hand, exact metrics over padded
batches, denoising noise on the input only, and the autoencoder config end to end (train,
evaluate with PNGs, `cnnjax.load` reconstructions)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax
from cnnjax import tasks
from cnnjax.data.sources import DataInfo
from cnnjax.metrics.reconstruction import ReconstructionMetrics, per_image_errors, psnr
from tests.conftest import run_cli


def _task(**kw):
    return tasks.create("reconstruction", DataInfo.synthetic((8, 8, 1), 10), image_size=8, **kw)


def _record(i=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (8, 8, 1), np.uint8), "label": 1, "index": i}


def test_psnr_and_per_image_errors_by_hand():
    assert float(psnr(0.01)) == pytest.approx(20.0)
    assert float(psnr(1e-4, max_value=1.0)) == pytest.approx(40.0)
    assert float(psnr(0.0)) == pytest.approx(100.0)  # capped, not infinite
    pred = np.zeros((2, 2, 2, 1), np.float32)
    target = np.stack([np.full((2, 2, 1), 0.1), np.full((2, 2, 1), 0.2)]).astype(np.float32)
    err = per_image_errors(pred, target)
    np.testing.assert_allclose(err["squared_error"], [0.04, 0.16], rtol=1e-5)
    np.testing.assert_allclose(err["values"], [4, 4])
    np.testing.assert_allclose(err["psnr"], [20.0, 10 * np.log10(1 / 0.04)], rtol=1e-5)


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_loss_is_the_per_image_mean_over_real_examples(loss):
    task = _task(reconstruction_loss=loss)
    logits = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    target = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1))
    apply_fn = lambda v, x, train, **kw: ((logits, {}), {}) if train else (logits, {})
    batch = {"image": target, "target": target, "mask": jnp.array([1.0, 1.0, 0.0])}
    out = task.loss(apply_fn, {}, batch, None)
    p = np.asarray(jax.nn.sigmoid(logits), np.float64)
    t = np.asarray(target, np.float64)
    if loss == "mse":
        per = ((p - t) ** 2).mean((1, 2, 3))
    else:
        per = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean((1, 2, 3))
    assert float(out.denominator) == 2
    np.testing.assert_allclose(out.numerator, per[:2].sum(), rtol=1e-5)
    sq_num, sq_den = out.terms["mse"]
    np.testing.assert_allclose(sq_num / sq_den, ((p - t) ** 2)[:2].mean(), rtol=1e-5)


def test_metrics_are_exact_over_padded_batches():
    acc = ReconstructionMetrics()
    e = per_image_errors(np.zeros((3, 2, 2, 1)), np.full((3, 2, 2, 1), 0.1))
    acc.add({"loss": np.array([1.0, 2.0, 9.0]), **e, "mask": np.array([1.0, 1.0, 0.0])})
    e2 = per_image_errors(np.zeros((1, 2, 2, 1)), np.full((1, 2, 2, 1), 0.3))
    acc.add({"loss": np.array([3.0]), **e2, "mask": np.array([1.0])})
    r = acc.result()
    assert r["num_examples"] == 3 and r["loss"] == pytest.approx(2.0)
    assert r["mse"] == pytest.approx((0.01 * 8 + 0.09 * 4) / 12)
    assert r["psnr"] == pytest.approx((20 + 20 + 10 * np.log10(1 / 0.09)) / 3, rel=1e-5)


def test_denoising_noise_reaches_only_the_input_and_is_fixed_per_record_in_eval():
    task = _task(denoise_std=0.3)
    a, b = task.eval_preprocess(_record()), task.eval_preprocess(_record())
    np.testing.assert_array_equal(a["image"], b["image"])  # the same noise every evaluation
    clean = _record()["image"][..., :].astype(np.float32) / 255
    np.testing.assert_allclose(a["target"], clean, atol=1e-6)  # the target is the clean image
    assert 0.1 < float(np.abs(a["image"] - a["target"]).mean()) < 0.4
    assert a["image"].min() >= 0 and a["image"].max() <= 1
    other = task.eval_preprocess(_record(i=4))
    assert not np.array_equal(other["image"] - other["target"], a["image"] - a["target"])
    plain = _task().eval_preprocess(_record())
    np.testing.assert_array_equal(plain["image"], plain["target"])


def test_autoencoder_config_trains_evaluates_and_loads_reconstructions(tmp_path):
    workdir = tmp_path / "ae"
    proc = run_cli("cnnjax.train", "--config=configs/autoencoder.py:smoke,denoise",
                   f"--workdir={workdir}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "psnr" in proc.stdout and (workdir / "samples" / "step_0000004.png").exists()
    ev = run_cli("cnnjax.evaluate", f"--workdir={workdir}")
    assert ev.returncode == 0, ev.stderr[-2000:]
    result = json.loads(ev.stdout.strip().splitlines()[-1])
    assert result["num_examples"] == 359 and {"mse", "psnr", "loss"} <= set(result)
    assert (workdir / "samples" / "evaluate_test_4.png").stat().st_size > 1000
    run = cnnjax.load(workdir)
    images = np.random.default_rng(0).integers(0, 256, (70, 8, 8), np.uint8)  # no channel axis
    pred = run.predict(images)
    assert pred.reconstruction.shape == (70, 16, 16, 1)
    assert pred.reconstruction.min() >= 0 and pred.reconstruction.max() <= 1
    fig = run.show(images[:4])
    assert len(fig.axes) == 8  # input and reconstruction rows of 4 examples
