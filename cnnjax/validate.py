"""Early checks of a config: every bad value gets a clear ConfigError before compilation."""

import jax
import jax.numpy as jnp

from cnnjax import guards, optim
from cnnjax.errors import ConfigError


def _positive(value, name: str, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        want = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{name} must be {want}, got {value!r}")


def check_values(config, num_processes: int = 1, num_devices: int = 1) -> None:
    d, o, t = config.data, config.optim, config.train
    _positive(d.batch_size, "data.batch_size")
    _positive(d.eval_batch_size, "data.eval_batch_size", allow_zero=True)
    _positive(d.image_size, "data.image_size")
    _positive(o.learning_rate, "optim.learning_rate")
    _positive(o.weight_decay, "optim.weight_decay", allow_zero=True)
    _positive(o.warmup_steps, "optim.warmup_steps", allow_zero=True)
    _positive(t.num_steps, "train.num_steps")
    _positive(t.num_epochs, "train.num_epochs", allow_zero=True)
    _positive(t.log_every_steps, "train.log_every_steps")
    _positive(t.checkpoint_every_steps, "train.checkpoint_every_steps")
    _positive(config.eval.every_steps, "eval.every_steps")
    _positive(config.model.aux_loss_weight, "model.aux_loss_weight", allow_zero=True)
    if not 0 <= t.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing!r}")
    for name, value, allowed in [
        ("optim.name", o.name, optim.OPTIMIZERS),
        ("optim.schedule", o.schedule, optim.SCHEDULES),
        ("optim.weight_decay_on", o.weight_decay_on, optim.DECAY_TARGETS),
        ("train.nan_policy", t.nan_policy, guards.NAN_POLICIES),
    ]:
        if value not in allowed:
            raise ConfigError(f"{name} '{value}' is not one of {list(allowed)}")
    for name, b in [("data.batch_size", d.batch_size), ("eval batch size", eval_batch(config))]:
        if b % num_devices or b % num_processes:
            raise ConfigError(
                f"{name} {b} must be divisible by the {num_devices} devices and "
                f"{num_processes} processes that share it"
            )


def eval_batch(config) -> int:
    return config.data.eval_batch_size or config.data.batch_size


def check_model_input(model, image_size: int, channels: int) -> None:
    """Traces the model abstractly; too-small images or bad kwargs become ConfigErrors."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    try:
        _, feats = jax.eval_shape(
            lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0], x
        )
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ConfigError(
            f"model '{type(model).__name__}' cannot run on {image_size}x{image_size}x{channels} "
            f"images: {e}"
        ) from e
    for name, f in feats.items():
        if f.ndim == 4 and min(f.shape[1:3]) < 1:
            raise ConfigError(
                f"data.image_size {image_size} is too small for this model: feature map "
                f"'{name}' would be {f.shape[1]}x{f.shape[2]}; use a larger image size"
            )
