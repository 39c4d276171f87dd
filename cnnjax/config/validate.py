"""Early checks of a config: every bad value gets a clear ConfigError before compilation."""

import jax

from cnnjax.errors import ConfigError
from cnnjax.models.rewrite import BATCH_NORMS, COMPUTE_DTYPES, CONV_CHOICES

# The allowed values of the config's choice settings (the engine builds from these names).
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "piecewise", "constant")
DECAY_TARGETS = ("all", "kernels")
NAN_POLICIES = ("stop", "skip")


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
    _positive(config.eval.num_samples, "eval.num_samples", allow_zero=True)
    for name, value, allowed in [
        ("optim.name", o.name, OPTIMIZERS),
        ("optim.schedule", o.schedule, SCHEDULES),
        ("optim.weight_decay_on", o.weight_decay_on, DECAY_TARGETS),
        ("train.nan_policy", t.nan_policy, NAN_POLICIES),
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


def check_eval_metric(config, task) -> tuple[str, str]:
    """-> (metric name, 'max' | 'min') that checkpoint retention keeps the best of:
    eval.best_metric, or the task's own when it is ''."""
    name = config.eval.best_metric or task.best_metric
    if name not in task.METRICS:
        raise ConfigError(
            f"eval.best_metric '{name}' is not a metric of task '{task.name}'; its metrics: "
            f"{sorted(task.METRICS)}"
        )
    return name, task.METRICS[name]


def check_model_input(model, init_inputs: tuple) -> None:
    """Traces the model abstractly on the task's init inputs (a batch of one); too-small
    images or bad kwargs become ConfigErrors."""
    specs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in init_inputs)
    shape = "x".join(str(d) for d in specs[0].shape[1:])
    try:
        _, feats = jax.eval_shape(
            lambda *x: model.init_with_output(jax.random.key(0), *x, train=False)[0], *specs
        )
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ConfigError(
            f"model '{type(model).__name__}' cannot run on {shape} inputs: {e}"
        ) from e
    for name, f in feats.items():
        if getattr(f, "ndim", 0) == 4 and min(f.shape[1:3]) < 1:
            raise ConfigError(
                f"data.image_size {specs[0].shape[1]} is too small for this model: feature map "
                f"'{name}' would be {f.shape[1]}x{f.shape[2]}; use a larger image size"
            )


def check_speed(train_cfg, global_batch: int, num_devices: int) -> None:
    """ConfigError for a bad speed option (config group `train`), before anything compiles."""
    t = train_cfg
    if t.compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(
            f"train.compute_dtype '{t.compute_dtype}' is not one of {list(COMPUTE_DTYPES)}"
        )
    if t.conv not in CONV_CHOICES:
        raise ConfigError(f"train.conv '{t.conv}' is not one of {list(CONV_CHOICES)}")
    if t.batch_norm not in BATCH_NORMS:
        raise ConfigError(f"train.batch_norm '{t.batch_norm}' is not one of {list(BATCH_NORMS)}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay!r}")
    k = t.grad_accum_steps
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"train.grad_accum_steps must be a positive integer, got {k!r}")
    if global_batch % (k * num_devices):
        raise ConfigError(
            f"data.batch_size {global_batch} must be divisible by train.grad_accum_steps {k} "
            f"times the {num_devices} device(s), so that every micro-batch splits evenly"
        )
