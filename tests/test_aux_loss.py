"""Auxiliary classifier losses: a model whose training forward returns features['aux_logits']
trains on main + aux_loss_weight * sum of the aux cross-entropies (GoogLeNet paper: 0.3);
metrics report the main head separately; eval never runs the aux heads."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.config.base import base_config
from cnnjax.data.sources import DataInfo
from cnnjax.engine.build import build_task
from cnnjax.engine.state import TrainState, create_state
from cnnjax.errors import ConfigError
from tests.conftest import classification_eval, classification_step, image_inputs

train_step = classification_step(3)  # the engine's step with a 3-class task
eval_step = classification_eval(3)

FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
GOOGLENET_AUX_WEIGHT = 0.3  # Szegedy et al. 2014, sec. 5; torchvision's reference recipe


class TwoAuxHeads(nn.Module):
    """Linear main head and two linear aux heads (the latter only in training)."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        logits = nn.Dense(self.num_classes, name="fc")(x)
        aux = (
            nn.Dense(self.num_classes, name="aux1")(x),
            nn.Dense(self.num_classes, name="aux2")(x),
        )
        return logits, ({"aux_logits": aux} if train or self.is_initializing() else {})


class OneHead(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(3, name="fc")(x.reshape(x.shape[0], -1)), {}


def _ce(logits, labels):
    """Per-example softmax cross-entropy in float64 numpy."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return np.log(np.exp(z).sum(-1)) - z[np.arange(len(labels)), labels]


def _tiny():
    model = TwoAuxHeads()
    x = jax.random.normal(jax.random.key(0), (4, 2, 2, 3))
    batch = {"image": x, "label": jnp.array([0, 2, 1, 2]), "mask": jnp.array([1.0, 1, 1, 0])}
    state = create_state(model, optax.sgd(0.1), jax.random.key(1), image_inputs((2, 2, 3)))
    return model, jax.device_put(state, jax.devices()[0]), batch


def _by_hand(model, state, batch):
    """(main, aux1, aux2) mean cross-entropies over the masked examples."""
    _, feats = model.apply({"params": state.params}, batch["image"], train=True)
    logits, _ = model.apply({"params": state.params}, batch["image"])
    m = np.asarray(batch["mask"], bool)
    label = np.asarray(batch["label"])[m]
    return [float(_ce(np.asarray(z)[m], label).mean()) for z in (logits, *feats["aux_logits"])]


@pytest.mark.parametrize("weight", [GOOGLENET_AUX_WEIGHT, 0.0])
def test_loss_is_main_plus_weighted_aux_by_hand(weight):
    model, state, batch = _tiny()
    main, aux1, aux2 = _by_hand(model, state, batch)
    step = jax.jit(classification_step(3, aux_loss_weight=weight))
    new_state, metrics = step(state, batch)
    np.testing.assert_allclose(metrics["loss"], main + weight * (aux1 + aux2), rtol=1e-5)
    np.testing.assert_allclose(metrics["main_loss"], main, rtol=1e-5)
    np.testing.assert_allclose(metrics["aux_loss"], aux1 + aux2, rtol=1e-5)
    # Gradients reach the aux heads exactly when they are weighted (plain SGD, no decay).
    for head in ("aux1", "aux2"):
        moved = jax.tree.map(
            lambda a, b: bool(jnp.any(a != b)), state.params[head], new_state.params[head]
        )
        assert all(jax.tree.leaves(moved)) == (weight > 0), (head, moved)
    assert bool(jnp.any(state.params["fc"]["kernel"] != new_state.params["fc"]["kernel"]))


def test_aux_sums_accumulate_over_micro_batches():
    _, state, batch = _tiny()
    batch["mask"] = jnp.ones((4,))
    one = jax.jit(train_step)(state, batch)[1]
    two = jax.jit(classification_step(3, grad_accum_steps=2))(state, batch)[1]
    assert set(one) == set(two) >= {"loss", "main_loss", "aux_loss", "accuracy"}
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, err_msg=k)


def test_models_without_aux_heads_keep_their_metrics():
    _, _, batch = _tiny()
    state = create_state(OneHead(), optax.sgd(0.1), jax.random.key(1), image_inputs((2, 2, 3)))
    metrics = jax.jit(train_step)(state, batch)[1]
    shown = {k for k in metrics if not k.startswith("weight/")}
    assert shown == {"loss", "accuracy", "top5_accuracy", "grad_norm", "param_norm"}


def _host_state(model, x, tx):
    """Train state with variables filled on the host (kernels ~ N(0, 1 / fan_in), BN scale and
    variance 1, the rest 0): compiling GoogLeNet's initialisers would double this test's time."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])))
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)

    v = jax.tree_util.tree_map_with_path(fill, shapes)
    state = TrainState.create(
        apply_fn=model.apply,
        params=v["params"],
        batch_stats=v["batch_stats"],
        tx=tx,
        rng=jax.random.PRNGKey(0),
    )
    return jax.device_put(state, jax.devices()[0])


def test_googlenet_trains_its_aux_heads_and_evaluates_without_them():
    model = models.create("googlenet", num_classes=4, aux_logits=True)
    x = jax.random.normal(jax.random.key(1), (2, 15, 15, 3))
    labels = np.array([0, 3])
    batch = {"image": x, "label": jnp.asarray(labels), "mask": jnp.ones((2,))}
    state = _host_state(model, x, optax.sgd(0.01))
    eval_4 = classification_eval(4)

    @functools.partial(jax.jit, compiler_options=FAST)
    def by_hand(state):
        """The train step's forward (same variables and dropout key), and the eval sums with
        the trained aux heads and with scrambled ones."""
        rng = jax.random.fold_in(state.rng, state.step)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        (logits, feats), _ = model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
        )
        params = dict(state.params)
        params["aux1"] = jax.tree.map(lambda p: p + 1.0, params["aux1"])
        params["aux2"] = jax.tree.map(lambda p: -p, params["aux2"])
        scrambled = eval_4(state.replace(params=params), batch)
        eval_logits, _ = model.apply(variables, x)
        return (logits, *feats["aux_logits"]), eval_logits, eval_4(state, batch), scrambled

    (logits, aux1, aux2), _, _, _ = by_hand(state)
    main, a1, a2 = (_ce(z, labels).mean() for z in (logits, aux1, aux2))
    step = jax.jit(classification_step(4), compiler_options=FAST)
    new_state, metrics = step(state, batch)
    np.testing.assert_allclose(metrics["loss"], main + 0.3 * (a1 + a2), rtol=1e-4)
    np.testing.assert_allclose(metrics["main_loss"], main, rtol=1e-4)
    np.testing.assert_allclose(metrics["aux_loss"], a1 + a2, rtol=1e-4)
    for head in ("aux1", "aux2"):
        moved = jax.tree.map(
            lambda a, b: bool(jnp.any(a != b)), state.params[head], new_state.params[head]
        )
        assert all(jax.tree.leaves(moved)), (head, moved)

    # Eval: the aux heads' weights do not matter, and the loss is the main head's alone.
    _, eval_logits, sums, scrambled = by_hand(new_state)
    for k in sums:
        np.testing.assert_array_equal(sums[k], scrambled[k], err_msg=k)
    np.testing.assert_allclose(sums["loss"], _ce(eval_logits, labels), rtol=1e-4)


def test_config_default_and_validation():
    c = base_config()
    assert c.task.kwargs.aux_loss_weight == GOOGLENET_AUX_WEIGHT
    c.task.kwargs.aux_loss_weight = -0.1
    info = DataInfo.synthetic((8, 8, 1), 10)
    with pytest.raises(
        ConfigError, match="task.kwargs.aux_loss_weight must be non-negative, got -0.1"
    ):
        build_task(c, info)
