"""Optimisers and learning-rate schedules from config group `optim` (all optax)."""

import jax
import optax

from cnnjax.config.validate import OPTIMIZERS, SCHEDULES
from cnnjax.errors import ConfigError


def schedule(optim_cfg, num_steps: int) -> optax.Schedule:
    """Warmup (linear from 0) followed by cosine decay, piecewise steps or a constant."""
    lr, warmup = optim_cfg.learning_rate, optim_cfg.warmup_steps
    if optim_cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1))
    if optim_cfg.schedule == "piecewise":
        bounds = {int(f * num_steps): optim_cfg.decay_factor for f in optim_cfg.boundaries}
        main = optax.piecewise_constant_schedule(lr, {b - warmup: s for b, s in bounds.items()})
    elif optim_cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ConfigError(f"optim.schedule '{optim_cfg.schedule}' is not one of {SCHEDULES}")
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(params, target: str):
    if target == "all":
        return jax.tree.map(lambda _: True, params)
    # 'kernels': decay only weights of rank >= 2 (convolutions, dense), not biases or BN.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def create(optim_cfg, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """-> (optax transformation, schedule) with decoupled, masked weight decay."""
    lr = schedule(optim_cfg, num_steps)
    mask = lambda p: _decay_mask(p, optim_cfg.weight_decay_on)
    if optim_cfg.name == "sgd":
        parts = [
            optax.add_decayed_weights(optim_cfg.weight_decay, mask),
            optax.sgd(lr, momentum=optim_cfg.momentum or None, nesterov=optim_cfg.nesterov),
        ]
    elif optim_cfg.name == "adamw":
        parts = [optax.adamw(lr, weight_decay=optim_cfg.weight_decay, mask=mask)]
    else:
        raise ConfigError(f"optim.name '{optim_cfg.name}' is not one of {OPTIMIZERS}")
    if optim_cfg.grad_clip_norm > 0:
        parts.insert(0, optax.clip_by_global_norm(optim_cfg.grad_clip_norm))
    return optax.chain(*parts), lr
