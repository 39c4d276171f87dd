"""Per-layer diagnostics of one training batch: gradient norms and activation statistics.

With `train.diagnostics_every_steps = N > 0` the trainer runs `diagnostics_step` on the batch
of every N-th step, after that step's update (the state's new parameters; nothing is updated
or checkpointed, so resume stays bitwise exact), and writes one row of split 'diagnostics'
to metrics.jsonl and TensorBoard:

  grad_norm/<layer>   L2 norm of the loss gradient over the layer's parameters (kernel and
                      bias together), the loss being the task's training loss (numerator /
                      denominator) in train mode, BatchNorm on batch statistics;
  act_mean/<layer>, act_std/<layer>
                      mean and standard deviation of the layer's output over the batch;
  dead/<layer>        the fraction of output channels (last axis) that are <= 0 at every
                      position of every example: units a following ReLU would silence for
                      the whole batch ("dead ReLUs"; for a BatchNorm it is the
                      pre-activation, for a final Dense the logits).

Layers are the leaf modules that hold parameters or normalise: Conv (and its oneDNN /
barrier variants), ConvTranspose, Dense, BatchNorm (flax's and cnnjax's), LayerNorm, GroupNorm,
named by their module path ('stage1/block0/conv1'); a module called more than once (a
shared layer, a recurrent cell over time steps) reports its last call's output. Costs one
extra forward and backward pass every N steps (compiled on first use).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from cnnjax.engine import step
from cnnjax.models.batch_norm import BatchNorm as CnnjaxBatchNorm

LAYER_TYPES = (nn.Conv, nn.ConvTranspose, nn.Dense, nn.BatchNorm, CnnjaxBatchNorm, nn.LayerNorm,
               nn.GroupNorm)  # fmt: skip
SPLIT = "diagnostics"


def _is_layer(module, method_name: str) -> bool:
    return method_name == "__call__" and isinstance(module, LAYER_TYPES)


def _capturing(apply_fn, box: dict):
    """`apply_fn` that also captures the layers' outputs into box['intermediates']."""

    def apply(variables, *args, mutable=False, **kwargs):
        cols = True if mutable is True else [*([mutable] if isinstance(mutable, str) else
                                                mutable or []), "intermediates"]  # fmt: skip
        out, updates = apply_fn(variables, *args, capture_intermediates=_is_layer,
                                mutable=cols, **kwargs)  # fmt: skip
        updates = dict(updates)
        box["intermediates"] = updates.pop("intermediates", {})
        return (out, updates) if mutable else out

    return apply


def _stats(x) -> dict:
    x = x.astype(jnp.float32)
    alive = (x > 0).reshape(-1, x.shape[-1]).any(0)  # per channel, over batch and positions
    return {"act_mean": x.mean(), "act_std": x.std(), "dead": 1.0 - alive.mean()}


def diagnostics_step(state, batch, *, task) -> dict:
    """{'grad_norm/<layer>', 'act_mean/<layer>', 'act_std/<layer>', 'dead/<layer>': []
    float32} for one batch at the state's parameters (see the module docstring)."""
    rng = jax.random.fold_in(state.rng, state.step)
    batch = task.device_preprocess(batch, step.augment_key(state))
    box = {}
    apply_fn = _capturing(state.apply_fn, box)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        out = task.loss(apply_fn, variables, batch, rng)
        den = jnp.asarray(out.denominator, jnp.float32)
        return out.numerator / jnp.where(den > 0, den, 1.0), box.pop("intermediates")

    (_, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    out = {}
    for path, leaves in _by_layer(grads).items():
        out[f"grad_norm/{path}"] = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                                                for g in leaves))  # fmt: skip
    for path, value in traverse_util.flatten_dict(acts, sep="/").items():
        # '<module path>/__call__' -> a tuple of the outputs of each call
        layer = path.removesuffix("/__call__")
        last = value[-1] if isinstance(value, tuple) else value
        arrays = [a for a in jax.tree.leaves(last) if jnp.issubdtype(a.dtype, jnp.floating)]
        if arrays and arrays[0].ndim >= 2:
            for k, v in _stats(arrays[0]).items():
                out[f"{k}/{layer}"] = v
    return out


def _by_layer(grads) -> dict:
    """{module path: [its parameter gradients]} (the path without the parameter name)."""
    layers: dict[str, list] = {}
    for path, g in traverse_util.flatten_dict(grads, sep="/").items():
        layers.setdefault(path.rsplit("/", 1)[0] if "/" in path else path, []).append(g)
    return layers
