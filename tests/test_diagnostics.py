"""Per-layer diagnostics (cnnjax/engine/diagnostics.py): gradient norms equal the engine's own
gradients layer by layer, activation statistics and dead units equal a numpy count on the
captured outputs, and a run that logs them trains to bitwise the same parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from cnnjax.engine import trainer
from cnnjax.engine.diagnostics import diagnostics_step
from cnnjax.engine.state import create_state
from cnnjax.engine.step import _loss_and_grads
from cnnjax.logs.writers import read_metrics
from tests.conftest import classification_task, load_config


class _Net(nn.Module):
    """conv -> BN -> relu -> dense 'hidden' -> relu -> dense 'fc' (10 classes)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(6, name="hidden")(x))
        return nn.Dense(10, name="fc")(x), {}


def _setup():
    task = classification_task(10, image_size=8, channels=1)
    model = _Net()
    state = create_state(
        model, optax.sgd(0.1), jax.random.key(0), (np.zeros((1, 8, 8, 1), np.float32),)
    )
    # Three of the six hidden units can never fire: a bias far below any pre-activation.
    params = traverse_util.flatten_dict(state.params, sep="/")
    params["hidden/bias"] = params["hidden/bias"].at[:3].set(-1e4)
    state = state.replace(params=traverse_util.unflatten_dict(params, sep="/"))
    x = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
    batch = {"image": x, "label": jnp.arange(16) % 10, "mask": jnp.ones(16)}
    return task, model, state, batch


def test_gradient_norms_and_activation_statistics_per_layer():
    task, model, state, batch = _setup()
    out = jax.jit(lambda s, b: diagnostics_step(s, b, task=task))(state, batch)
    assert set(out) == {f"{k}/{layer}" for k in ("grad_norm", "act_mean", "act_std", "dead")
                        for layer in ("conv", "bn", "hidden", "fc")}  # fmt: skip
    # The engine's gradient of the numerator, divided by the denominator as the step does.
    rng = jax.random.fold_in(state.rng, state.step)
    (_, den, _), _, grads = _loss_and_grads(
        task, state, state.params, state.batch_stats, batch, rng
    )
    for layer in ("conv", "bn", "hidden", "fc"):
        want = np.sqrt(sum(np.sum(np.square(np.asarray(g) / float(den)))
                           for g in jax.tree.leaves(grads[layer])))  # fmt: skip
        np.testing.assert_allclose(out[f"grad_norm/{layer}"], want, rtol=1e-5)
    # Outputs in train mode (BatchNorm on batch statistics), as the loss saw them.
    mutable = ["batch_stats", "intermediates"]
    _, inter = model.apply(state.variables, batch["image"], train=True, mutable=mutable,
                           capture_intermediates=True)  # fmt: skip
    for layer in ("conv", "bn", "hidden", "fc"):
        y = np.asarray(inter["intermediates"][layer]["__call__"][0], np.float64)
        np.testing.assert_allclose(out[f"act_mean/{layer}"], y.mean(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out[f"act_std/{layer}"], y.std(), rtol=1e-4)
        flat = y.reshape(-1, y.shape[-1])
        assert out[f"dead/{layer}"] == pytest.approx(np.mean(~(flat > 0).any(0)))
    assert out["dead/hidden"] == pytest.approx(0.5)  # the three silenced units
    assert out["grad_norm/hidden"] > 0


def test_a_run_with_diagnostics_logs_them_and_trains_bitwise_the_same(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cnnjax import notebook

    plain = load_config("configs/resnet20_cifar.py", "digits,smoke")
    logged = load_config(
        "configs/resnet20_cifar.py", "digits,smoke", ["train.diagnostics_every_steps=2"]
    )
    trainer.train_and_evaluate(plain, tmp_path / "plain")
    trainer.train_and_evaluate(logged, tmp_path / "logged")
    rows = [r for r in read_metrics(tmp_path / "logged") if r["split"] == "diagnostics"]
    assert [r["step"] for r in rows] == [2, 4]
    layers = [k.removeprefix("dead/") for k in rows[0] if k.startswith("dead/")]
    # Every convolution, BatchNorm and the head: parameters and outputs, both reported.
    assert {k.removeprefix("grad_norm/") for k in rows[0] if k.startswith("grad_norm/")} == set(
        layers
    )
    assert len(layers) >= 20 and all(0 <= rows[0][f"dead/{la}"] <= 1 for la in layers)
    assert not any(r["split"] == "diagnostics" for r in read_metrics(tmp_path / "plain"))
    events = EventAccumulator(str(tmp_path / "logged" / "tensorboard"))
    events.Reload()
    assert any(t.startswith("diagnostics/grad_norm/") for t in events.Tags()["scalars"])
    a, b = (notebook.load(tmp_path / d).variables for d in ("plain", "logged"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_negative_interval_is_a_config_error():
    from cnnjax.config import validate
    from cnnjax.errors import ConfigError

    config = load_config(
        "configs/resnet20_cifar.py", "digits,smoke", ["train.diagnostics_every_steps=-1"]
    )
    with pytest.raises(
        ConfigError, match="train.diagnostics_every_steps must be an integer >= 0, got -1"
    ):
        validate.check_values(config)
