"""Speed options: bfloat16 compute, gradient accumulation, weight EMA, the im2col conv and
JAX's persistent compilation cache (a second start of the same run compiles nothing)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.config.validate import check_speed, check_values
from cnnjax.engine.state import create_state
from cnnjax.errors import ConfigError
from cnnjax.logs.writers import read_metrics
from cnnjax.models import rewrite
from cnnjax.models.patch_conv import conv_for_backend
from cnnjax.ops import onednn
from tests.conftest import classification_step, image_inputs, load_config, run_cli

SMOKE = "--config=configs/resnet20_cifar.py:digits,smoke"


def _train_cfg(**overrides):
    cfg = load_config("configs/resnet20_cifar.py", "digits,smoke")
    with cfg.unlocked():
        for k, v in overrides.items():
            setattr(cfg.train, k, v)
    return cfg.train


def _batch(n=8, size=16, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.standard_normal((n, size, size, channels), np.float32)),
        "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
        "mask": jnp.ones((n,), jnp.float32),
    }


class TinyNet(nn.Module):
    """BN-free, so gradient accumulation must match the whole batch to float rounding."""

    num_classes: int = 10
    conv: object = nn.Conv
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(self.conv(8, (3, 3), (2, 2), dtype=self.dtype, name="conv1")(x))
        x = nn.relu(self.conv(8, (1, 1), dtype=self.dtype, name="conv2")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x.mean((1, 2))).astype(jnp.float32), {
            "pre_logits": x
        }


def test_bfloat16_computes_in_bf16_but_keeps_float32_params_and_bn_stats():
    model = rewrite.apply_to_model(
        models.create("resnet20_cifar", num_classes=10), _train_cfg(compute_dtype="bfloat16")
    )
    assert model.dtype == jnp.bfloat16
    tx = optax.sgd(0.01, momentum=0.9)
    state = create_state(model, tx, jax.random.key(0), image_inputs((16, 16, 3)))
    batch = _batch()
    logits, feats = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"]
    )
    assert logits.dtype == jnp.float32 and feats["stage2"].dtype == jnp.bfloat16
    new, metrics = jax.jit(classification_step(10))(state, batch)
    dtypes = {x.dtype for x in jax.tree.leaves((new.params, new.batch_stats, new.opt_state))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    # Same step in float32: the bf16 loss agrees to bf16 precision (8 mantissa bits).
    f32 = create_state(
        model.clone(dtype=jnp.float32), tx, jax.random.key(0), image_inputs((16, 16, 3))
    )
    _, m32 = jax.jit(classification_step(10))(f32, batch)
    assert abs(float(metrics["loss"]) - float(m32["loss"])) < 0.05 * float(m32["loss"])


def test_model_without_dtype_field_refuses_bfloat16():
    class NoDtype(nn.Module):
        num_classes: int = 10

        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(self.num_classes)(x.mean((1, 2))), {}

    with pytest.raises(ConfigError, match="no dtype field"):
        rewrite.apply_to_model(NoDtype(), _train_cfg(compute_dtype="bfloat16"))


@pytest.mark.parametrize("k", [2, 4])
def test_grad_accumulation_equals_the_whole_batch_without_bn(k):
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_state(TinyNet(), tx, jax.random.key(1), image_inputs((16, 16, 3)))
    batch = _batch()
    whole, m1 = jax.jit(classification_step(10))(state, batch)
    accum, mk = jax.jit(classification_step(10, grad_accum_steps=k))(state, batch)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(accum.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    for name in ("loss", "accuracy", "top5_accuracy", "grad_norm"):
        np.testing.assert_allclose(m1[name], mk[name], rtol=1e-5)


def test_grad_accumulation_with_bn_is_close_and_updates_running_stats():
    model = models.create("resnet20_cifar", num_classes=10)
    state = create_state(model, optax.sgd(0.01), jax.random.key(0), image_inputs((16, 16, 3)))
    batch = _batch(n=16)
    whole, m1 = jax.jit(classification_step(10))(state, batch)
    accum, m2 = jax.jit(classification_step(10, grad_accum_steps=2))(state, batch)
    # BN normalises each micro-batch by its own statistics: close, not equal.
    assert abs(float(m1["loss"]) - float(m2["loss"])) < 0.1
    before = jax.tree.leaves(state.batch_stats)
    assert any(
        not np.allclose(a, b)
        for a, b in zip(before, jax.tree.leaves(accum.batch_stats), strict=True)
    )


def test_ema_follows_the_documented_update_and_is_kept_for_bn_stats():
    model = models.create("resnet20_cifar", num_classes=10)
    state = create_state(
        model, optax.sgd(0.1), jax.random.key(0), image_inputs((16, 16, 3)), ema=True
    )
    step = jax.jit(classification_step(10, ema_decay=0.99))
    new, _ = step(state, _batch())
    d = min(0.99, 1 / 10)  # warm-up at step 0: (1 + 0) / (10 + 0)
    for tree in ("params", "batch_stats"):
        want = jax.tree.map(
            lambda e, x: d * e + (1 - d) * x, getattr(state, tree), getattr(new, tree)
        )
        got = getattr(new, f"ema_{tree}")
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert new.ema().params is new.ema_params
    # EMA off: nothing extra in the state (or in checkpoints).
    off = create_state(model, optax.sgd(0.1), jax.random.key(0), image_inputs((16, 16, 3)))
    assert off.ema_params == {} and off.ema_batch_stats == {}


def test_conv_choice_by_backend_and_bad_values():
    # im2col is an option, no longer the CPU default (BENCHMARKS.md, "CPU: im2col re-decided");
    # on one CPU device the default is oneDNN's convolution where it builds (test_onednn.py)
    auto = conv_for_backend("auto", "cpu", depthwise="xla")
    onednn_here = onednn.available()[0] and jax.device_count() == 1
    assert auto.keywords["conv_general_dilated"].onednn if onednn_here else auto is nn.Conv
    assert conv_for_backend("auto", "gpu") is nn.Conv  # depthwise 'auto' is XLA's off the CPU
    assert conv_for_backend("xla", "cpu", depthwise="xla") is nn.Conv
    # on the CPU, 'auto' computes depthwise convolutions as shifted multiplies
    shifted = conv_for_backend("xla", "cpu")
    assert shifted is conv_for_backend("xla", "cpu", depthwise="shifted") is not nn.Conv
    assert shifted.keywords["conv_general_dilated"].shifted_depthwise
    for bad, match in [
        ({"compute_dtype": "float16"}, r"train.compute_dtype must be one of \['float32', 'b"),
        ({"conv": "winograd"}, "train.conv must be one of .* got 'winograd'"),
        (
            {"depthwise": "fft"},
            r"train.depthwise must be one of \['auto', 'shifted', 'xla'\], got 'fft'",
        ),
        ({"ema_decay": 1.0}, r"train.ema_decay must be a number in \[0, 1\), got 1.0"),
        ({"grad_accum_steps": 0}, "train.grad_accum_steps must be an integer >= 1, got 0"),
    ]:
        config = load_config("configs/resnet20_cifar.py", "digits,smoke")
        config.train.update(bad)
        with pytest.raises(ConfigError, match=match):
            check_values(config)
    with pytest.raises(ConfigError, match="divisible by train.grad_accum_steps 3"):
        check_speed(_train_cfg(grad_accum_steps=3), global_batch=16, num_devices=1)


def test_bf16_accum_ema_run_writes_eval_ema_and_a_second_start_compiles_nothing(tmp_path):
    cache = tmp_path / "cache"
    args = [
        SMOKE,
        "--config.train.compute_dtype=bfloat16",
        "--config.train.grad_accum_steps=2",
        "--config.train.ema_decay=0.9",
        f"--config.train.compilation_cache_dir={cache}",
    ]
    first = run_cli("cnnjax.train", *args, f"--workdir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr[-2000:]
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) >= 2  # at least the train and eval steps
    rows = read_metrics(tmp_path / "a")
    ema = [r for r in rows if r["split"] == "eval_ema"]
    assert [r["step"] for r in ema] == [4] and ema[0]["num_examples"] == 64
    second = run_cli("cnnjax.train", *args, f"--workdir={tmp_path / 'b'}")
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(p.name for p in cache.iterdir()) == entries  # every executable was a hit
    # ... and the cached executables compute the same run.
    again = [r for r in read_metrics(tmp_path / "b") if r["split"] in ("eval", "eval_ema")]
    assert json.dumps(again) == json.dumps([r for r in rows if r["split"] in ("eval", "eval_ema")])
