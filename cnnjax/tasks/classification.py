"""Image classification: train state, and the pure train/eval steps the trainer jits."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from cnnjax.losses.classification import classification_loss, cross_entropy
from cnnjax.metrics.classification import eval_sums, topk_correct


class TrainState(train_state.TrainState):
    batch_stats: Any
    rng: jax.Array  # raw uint32 key; the step is folded in for dropout etc.


def create_state(model, tx, rng, image_shape) -> TrainState:
    """Initialises variables for images of `image_shape` (H, W, C) and the optimizer state."""
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        # A plain {} like train_step's: a FrozenDict here makes BN-free models retrace at step 2.
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
        rng=state_rng,
    )


def train_step(state: TrainState, batch, *, label_smoothing: float = 0.0):
    """One SGD step on a sharded batch -> (new state, metrics dict of [] float32)."""
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        (logits, _), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        loss, aux = classification_loss(logits, batch["label"], batch["mask"], label_smoothing)
        return loss, (aux, updates, logits)

    (loss, (aux, updates, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    metrics = {
        "loss": loss,
        "accuracy": aux["accuracy"],
        "top5_accuracy": (topk_correct(logits, batch["label"], 5) * batch["mask"]).sum()
        / jnp.maximum(batch["mask"].sum(), 1.0),
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(new_state.params),
    }
    return new_state, metrics


def eval_step(state: TrainState, batch):
    """Exact sums over a padded eval batch: {'loss', 'top1', 'top5', 'count'}."""
    logits, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
    )
    per_example = cross_entropy(logits, batch["label"])
    return eval_sums(logits, batch["label"], batch["mask"], per_example)
