"""A new user's first hour (issue 16): every bad input is one clear line and exit 2 before
anything is built, a failed start never locks its workdir, evaluate and load verify the
checkpoint they read (and name the steps that exist), configs load through a public call."""

import json
import shutil

import numpy as np
import pytest

import cnnjax
from cnnjax.config import files
from cnnjax.engine import trainer
from cnnjax.errors import EXIT_NONFINITE, ConfigError
from tests.conftest import ROOT, load_config, run_cli

SMOKE = "--config=configs/resnet20_cifar.py:digits,smoke"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config=configs/nope.py"], "config file 'configs/nope.py' does not exist; configs in"),
        (["--config=configs/resnet34.py:smok"], "unknown config argument(s) ['smok']"),
        ([SMOKE, "--config.model.kwargs.foo=1"], "model 'resnet20_cifar' has no option 'foo'."),
        ([SMOKE, "--config.model.kwargs.widht=8"], "Did you mean 'width'?"),
        ([SMOKE, "--config.data.batch_sizee=3"], "unknown config key 'data.batch_sizee'. Did"),
        ([SMOKE, "--config.train.num_steps=ten"], "config.train.num_steps expects int, got 'ten'"),
        ([SMOKE, "--config.data.image_size=1"], "data.image_size 1 is too small for this model"),
        ([SMOKE, "--config.data.aug.crop_padding=-1"], "data.aug.crop_padding must be an integer"),
        ([SMOKE, "--config.optim.momentum=-0.5"], "optim.momentum must be a number in [0, 1)"),
        ([SMOKE, "--config.train.keep_checkpoints=0"], "train.keep_checkpoints must be an integer"),
        ([SMOKE, "--config.data.max_eval_examples=-1"], "data.max_eval_examples must be an"),
        ([SMOKE, "--config.init.checkpoint=nope.pth"], "has no torchvision conversion"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(tmp_path, args, message):
    proc = run_cli("cnnjax.train", *args, f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "w").exists()


def test_a_model_option_the_config_does_not_list_can_be_set(tmp_path):
    config = load_config("configs/resnet20_cifar.py", "digits,smoke", ["model.kwargs.width=8"])
    assert config.model.kwargs.width == 8 and config.model.kwargs.shortcut == "A"
    config = files.load(ROOT / "configs/autoencoder.py:smoke", {"task.kwargs.denoise_std": 0.1})
    assert config.task.kwargs.denoise_std == 0.1 and config.is_locked


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_a_workdir_that_is_a_file_or_cannot_be_made_is_refused(tmp_path, kind):
    (tmp_path / "f").write_text("not a directory")
    workdir = tmp_path / "f" if kind == "file" else tmp_path / "f" / "run"
    proc = run_cli("cnnjax.train", SMOKE, f"--workdir={workdir}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"--workdir {workdir}" in proc.stderr
    assert (tmp_path / "f").read_text() == "not a directory"


def test_a_failed_start_does_not_lock_its_workdir(tmp_path):
    workdir = tmp_path / "w"
    # Diverges at step 1, before its first checkpoint: only config.json and logs exist.
    boom = run_cli(
        "cnnjax.train", SMOKE, f"--workdir={workdir}", "--config.optim.learning_rate=1e30"
    )
    assert boom.returncode == EXIT_NONFINITE, boom.stderr[-2000:]
    assert (workdir / "config.json").exists() and not (workdir / "checkpoints" / "2").exists()
    fixed = run_cli("cnnjax.train", SMOKE, f"--workdir={workdir}",
                    "--config.model.name=resnet32_cifar")  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["name"] == "resnet32_cifar" and saved["optim"]["learning_rate"] == 0.1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("first_hour") / "run"
    trainer.train_and_evaluate(load_config("configs/resnet20_cifar.py", "digits,smoke"), workdir)
    return workdir


def _garble(step_dir):
    f = max(
        (p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    data = bytearray(f.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = b"\xa5" * 64
    f.write_bytes(bytes(data))


def _listing(workdir):
    return sorted(
        str(p.relative_to(workdir)) for p in workdir.rglob("*") if "samples" not in p.parts
    )


def test_evaluate_and_load_name_the_steps_that_exist(trained):
    proc = run_cli("cnnjax.evaluate", f"--workdir={trained}", "--step=123")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no checkpoint of step 123" in proc.stderr and "steps: [2, 4]" in proc.stderr
    with pytest.raises(ConfigError, match=r"no checkpoint of step 123 .*steps: \[2, 4\]"):
        cnnjax.load(trained, step=123)


def test_readers_skip_a_corrupt_checkpoint_with_a_warning_and_rename_nothing(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    _garble(workdir / "checkpoints" / "4")
    before = _listing(workdir)
    run = cnnjax.load(workdir)
    assert run.step == 2  # the newest good one
    proc = run_cli("cnnjax.evaluate", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 2
    assert "warning: checkpoint 4 cannot be used" in proc.stderr
    named = run_cli("cnnjax.evaluate", f"--workdir={workdir}", "--step=4")
    assert named.returncode == 2 and "no checkpoint in" in named.stderr  # asked for: not silent
    _garble(workdir / "checkpoints" / "2")
    none = run_cli("cnnjax.evaluate", f"--workdir={workdir}")
    assert none.returncode == 2 and "verifies" in none.stderr
    assert _listing(workdir) == before  # readers leave the workdir as they found it


def test_predict_accepts_grey_batches_without_a_channel_axis_in_fixed_chunks(trained):
    run = cnnjax.load(trained)
    rng = np.random.default_rng(0)
    few, many = (rng.integers(0, 256, (n, 8, 8), np.uint8) for n in (3, 150))
    assert run.predict(few).labels.shape == (3,)
    p = run.predict(many)
    assert p.probs.shape == (150, 10) and run._predict._cache_size() == 1  # one compile
    np.testing.assert_allclose(run.predict(many[:3]).probs, p.probs[:3], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"images must be uint8 \[N, H, W, 1\]"):
        run.predict(np.zeros((2, 8, 8, 3), np.uint8))


def test_the_start_up_summary_names_a_pretrained_start_and_a_frozen_backbone():
    from cnnjax.engine.trainer import _init_summary

    c = load_config("configs/finetune.py", "probe")
    line = _init_summary(c)["init"]
    assert c.init.checkpoint in line and "resnet18" in line and "fc" in line and "frozen" in line
    assert _init_summary(load_config("configs/resnet34.py")) == {}
