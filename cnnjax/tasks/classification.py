"""Image classification: train state, and the pure train/eval steps the trainer jits.

`train_step` optionally accumulates gradients over micro-batches (`grad_accum_steps`) and
keeps an exponential moving average of the weights (`ema_decay`); see their docstrings.
A model whose training forward returns `features['aux_logits']` (a tuple of [B, K] logits,
e.g. GoogLeNet's auxiliary classifiers) has their cross-entropy added to the loss, each
weighted by `aux_loss_weight`; eval uses only the main logits.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from cnnjax.losses.classification import cross_entropy
from cnnjax.metrics.classification import eval_sums, topk_correct


class TrainState(train_state.TrainState):
    batch_stats: Any
    rng: jax.Array  # raw uint32 key; the step is folded in for dropout etc.
    # EMA of params and batch_stats; {} when EMA is off (nothing extra in checkpoints).
    ema_params: Any = None
    ema_batch_stats: Any = None

    def ema(self) -> "TrainState":
        """The same state with the EMA weights in place of the trained ones (for eval)."""
        return self.replace(params=self.ema_params, batch_stats=self.ema_batch_stats)


def create_state(model, tx, rng, image_shape, *, ema: bool = False) -> TrainState:
    """Initialises variables for images of `image_shape` (H, W, C) and the optimizer state.

    `ema=True` also keeps a copy of params and batch_stats that `train_step` averages.
    """
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    # A plain {} like train_step's: a FrozenDict here makes BN-free models retrace at step 2.
    batch_stats = variables.get("batch_stats", {})
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=batch_stats,
        tx=tx,
        rng=state_rng,
        ema_params=jax.tree.map(jnp.copy, variables["params"]) if ema else {},
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats) if ema else {},
    )


def _loss_and_grads(state, params, batch_stats, batch, rng, label_smoothing, aux_loss_weight):
    """-> (sums of loss/correct/top5/count over the masked batch, new batch_stats, grads).

    The gradient is of the summed (not mean) loss so that micro-batches add up exactly. With
    auxiliary logits, 'loss' is main + aux_loss_weight * sum of the aux cross-entropies and
    the sums also hold 'main_loss' and the unweighted 'aux_loss' (accuracy: main head only).
    """

    def loss_fn(params):
        (logits, features), updates = state.apply_fn(
            {"params": params, "batch_stats": batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        labels, mask = batch["label"], batch["mask"]
        per_example = cross_entropy(logits, labels, label_smoothing)
        sums = {
            "loss": (per_example * mask).sum(),
            "accuracy": (topk_correct(logits, labels, 1) * mask).sum(),
            "top5_accuracy": (topk_correct(logits, labels, 5) * mask).sum(),
            "count": mask.sum(),
        }
        aux_logits = features.get("aux_logits", ())
        if aux_logits:
            aux = sum(cross_entropy(a, labels, label_smoothing) for a in aux_logits)
            sums["main_loss"] = sums["loss"]
            sums["aux_loss"] = (aux * mask).sum()
            sums["loss"] = sums["main_loss"] + aux_loss_weight * sums["aux_loss"]
        return sums["loss"], (sums, updates.get("batch_stats", {}))

    (_, (sums, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return sums, new_stats, grads


def _micro_batches(batch, k: int):
    """[B, ...] -> [k, B // k, ...]; micro-batch j holds examples j, j + k, ... so that each
    keeps the batch's device sharding (the leading B // k stays split over the mesh)."""
    return jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch
    )


def _accumulate(state, batch, rng, label_smoothing, aux_loss_weight, k: int):
    """Sums (loss sums, grads) over k micro-batches with a scan; BN statistics are threaded
    through, so the running averages see k updates (as k small steps would give)."""
    loss_and_grads = functools.partial(
        _loss_and_grads, state, label_smoothing=label_smoothing, aux_loss_weight=aux_loss_weight
    )
    if k == 1:
        return loss_and_grads(state.params, state.batch_stats, batch, rng)

    def body(carry, xs):
        sums, stats, grads = carry
        micro, i = xs
        s, stats, g = loss_and_grads(state.params, stats, micro, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, sums, s), stats, jax.tree.map(jnp.add, grads, g)), None

    micro_batches = _micro_batches(batch, k)
    # The metric names depend on the model (aux heads add two): take them from a trace.
    first = jax.tree.map(lambda x: x[0], micro_batches)
    sums_shape = jax.eval_shape(loss_and_grads, state.params, state.batch_stats, first, rng)[0]
    sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (sums, stats, grads), _ = jax.lax.scan(
        body, (sums0, state.batch_stats, zeros), (micro_batches, jnp.arange(k))
    )
    return sums, stats, grads


def ema_update(ema, new, decay: float, step):
    """ema <- d * ema + (1 - d) * new with d = min(decay, (1 + step) / (10 + step)): the
    warm-up of tf.train.ExponentialMovingAverage, so early averages are not stuck at init."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, x: d * e + (1.0 - d) * x.astype(e.dtype), ema, new)


def train_step(
    state: TrainState,
    batch,
    *,
    label_smoothing: float = 0.0,
    grad_accum_steps: int = 1,
    ema_decay: float = 0.0,
    aux_loss_weight: float = 0.3,
):
    """One optimizer step on a sharded batch -> (new state, metrics dict of [] float32).

    grad_accum_steps k > 1 splits the batch into k micro-batches (B divisible by k times the
    number of devices) and sums their gradients: the same update as the whole batch up to
    float rounding, except that BatchNorm normalises each micro-batch by its own statistics.
    ema_decay > 0 (with a state created with ema=True) updates the weight EMA after the step.
    aux_loss_weight scales each auxiliary head's loss (0.3: GoogLeNet paper, torchvision's
    reference recipe); metrics then add 'main_loss' and 'aux_loss', and 'loss' is the total.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    sums, new_stats, grads = _accumulate(
        state, batch, rng, label_smoothing, aux_loss_weight, grad_accum_steps
    )
    count = jnp.maximum(sums["count"], 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
    if ema_decay > 0:
        new_state = new_state.replace(
            ema_params=ema_update(state.ema_params, new_state.params, ema_decay, state.step),
            ema_batch_stats=ema_update(
                state.ema_batch_stats, new_state.batch_stats, ema_decay, state.step
            ),
        )
    metrics = {k: v / count for k, v in sums.items() if k != "count"}
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(new_state.params)
    return new_state, metrics


def eval_step(state: TrainState, batch):
    """Exact sums over a padded eval batch: {'loss', 'top1', 'top5', 'count'}."""
    logits, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
    )
    per_example = cross_entropy(logits, batch["label"])
    return eval_sums(logits, batch["label"], batch["mask"], per_example)
