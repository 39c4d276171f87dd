"""The generic train and eval steps: pure functions of (state, batch) built from a task.

`train_step` takes the task's loss (numerator, denominator, named terms), optionally sums it
over micro-batches (`grad_accum_steps`), divides the summed gradient by the summed
denominator, applies the optimizer, updates the weight EMA (`ema_decay`) and reports every
metric as a value with its weight, so that logging windows average exactly.

Every step starts with the task's `device_preprocess`: the host batch (compact, e.g. uint8
images) becomes the model's inputs on device, with random augmentation in training drawn
from `augment_key(state)` (the run's seed and the step, so resume stays bitwise exact and
nothing new is checkpointed), deterministic in evaluation and prediction.
"""

import functools

import jax
import jax.numpy as jnp
import optax

WEIGHT = "weight/"  # metrics[WEIGHT + name]: the count behind metrics[name]
AUGMENT_STREAM = 0x617567  # 'aug': the augmentation keys' stream of the state's rng


def augment_key(state):
    """The PRNG key of this step's device augmentation: fold_in(fold_in(rng, AUGMENT_STREAM),
    step), apart from the dropout keys (fold_in(rng, step) and its micro-batch folds)."""
    return jax.random.fold_in(jax.random.fold_in(state.rng, AUGMENT_STREAM), state.step)


def _loss_and_grads(task, state, params, batch_stats, batch, rng):
    """-> ((numerator, denominator, terms), new batch_stats, grad of the numerator)."""

    def loss_fn(params):
        out = task.loss(state.apply_fn, {"params": params, "batch_stats": batch_stats}, batch, rng)
        stats = out.updates.get("batch_stats", {})
        return out.numerator, (out.denominator, out.terms, stats)

    (num, (den, terms, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return (num, den, terms), stats, grads


def micro_batches(batch, k: int):
    """[B, ...] -> [k, B // k, ...]; micro-batch j holds examples j, j + k, ... so that each
    keeps the batch's device sharding (the leading B // k stays split over the mesh)."""
    return jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch
    )


def accumulate(task, state, batch, rng, k: int):
    """Sums (numerator, denominator, terms) and gradients over k micro-batches with a scan;
    BN statistics are threaded through, so the running averages see k updates (as k small
    steps would give)."""
    loss_and_grads = functools.partial(_loss_and_grads, task, state)
    if k == 1:
        return loss_and_grads(state.params, state.batch_stats, batch, rng)

    def body(carry, xs):
        sums, stats, grads = carry
        micro, i = xs
        s, stats, g = loss_and_grads(state.params, stats, micro, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, sums, s), stats, jax.tree.map(jnp.add, grads, g)), None

    micro = micro_batches(batch, k)
    # The term names depend on the model (aux heads add two): take them from a trace.
    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(loss_and_grads, state.params, state.batch_stats, first, rng)[0]
    sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (sums, stats, grads), _ = jax.lax.scan(
        body, (sums0, state.batch_stats, zeros), (micro, jnp.arange(k))
    )
    return sums, stats, grads


def ema_update(ema, new, decay: float, step):
    """ema <- d * ema + (1 - d) * new with d = min(decay, (1 + step) / (10 + step)): the
    warm-up of tf.train.ExponentialMovingAverage, so early averages are not stuck at init."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, x: d * e + (1.0 - d) * x.astype(e.dtype), ema, new)


def _ratio(num, den):
    """num / den, and 0 where den is 0 (a term with nothing to count in this step)."""
    den = jnp.asarray(den, jnp.float32)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def train_step(state, batch, *, task, grad_accum_steps: int = 1, ema_decay: float = 0.0):
    """One optimizer step on a sharded batch -> (new state, metrics).

    metrics: {name: [] float32} for 'loss', every task term, 'grad_norm' and 'param_norm',
    and for each ratio 'weight/<name>': the count behind it (what a log window weighs it by).
    grad_accum_steps k > 1 splits the batch into k micro-batches (B divisible by k times the
    number of devices) and sums their numerators, denominators and gradients: the same
    update as the whole batch up to float rounding, except that BatchNorm normalises each
    micro-batch by its own statistics. ema_decay > 0 (with a state created with ema=True)
    updates the weight EMA after the step.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    batch = task.device_preprocess(batch, augment_key(state))
    (num, den, terms), new_stats, grads = accumulate(task, state, batch, rng, grad_accum_steps)
    scale = jnp.where(den > 0, den, 1.0)
    grads = jax.tree.map(lambda g: g / scale, grads)
    new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
    if ema_decay > 0:
        new_state = new_state.replace(
            ema_params=ema_update(state.ema_params, new_state.params, ema_decay, state.step),
            ema_batch_stats=ema_update(
                state.ema_batch_stats, new_state.batch_stats, ema_decay, state.step
            ),
        )
    pairs = {"loss": (num, den), **terms}
    metrics = {k: _ratio(n, d) for k, (n, d) in pairs.items()}
    metrics.update({WEIGHT + k: jnp.asarray(d, jnp.float32) for k, (_, d) in pairs.items()})
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(new_state.params)
    return new_state, metrics


def eval_step(state, batch, *, task):
    """The task's per-example eval outputs [B, ...] of a padded batch (with `mask`)."""
    return task.eval_outputs(state.apply_fn, state.variables, task.device_preprocess(batch, None))


def predict_step(state, batch, *, task):
    """The task's per-example predictions [B, ...] of a host batch."""
    return task.predict(state.apply_fn, state.variables, task.device_preprocess(batch, None))
