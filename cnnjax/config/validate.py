"""Early checks of a config: every bad value gets a clear ConfigError before compilation."""

import jax

from cnnjax.errors import ConfigError
from cnnjax.models.layers import maps_by_stride
from cnnjax.models.patch_conv import DEPTHWISE_CHOICES
from cnnjax.models.rewrite import (
    BATCH_NORM_CHOICES,
    COMPUTE_DTYPES,
    CONV_CHOICES,
    MATERIALIZE_CHOICES,
)

# The allowed values of the config's choice settings (the engine builds from these names).
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "piecewise", "constant")
DECAY_TARGETS = ("all", "kernels")
NAN_POLICIES = ("stop", "skip")


class Domain:
    """The allowed values of one config setting; `error(value)` -> None or why not.
    `outside` is a value just outside it (the tests set every setting to one)."""

    def __init__(self, what: str, ok, outside):
        self.what, self._ok, self.outside = what, ok, outside

    def error(self, value) -> str | None:
        try:
            good = self._ok(value)
        except TypeError:
            good = False
        return None if good else f"must be {self.what}, got {value!r}"


def _int(lo: int, hi: int | None = None) -> Domain:
    what = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= (hi or v)
    return Domain(what, ok, lo - 1)


def _real(lo: float, hi: float | None = None, *, lo_open=False, hi_open=True) -> Domain:
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    what = f"a number in {left}{lo}, {hi if hi is not None else 'inf'}{right}"

    def ok(v):
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        above = v > lo if lo_open else v >= lo
        below = hi is None or (v < hi if hi_open else v <= hi)
        return above and below

    return Domain(what, ok, lo if lo_open else lo - 1)


def _choice(values) -> Domain:
    return Domain(f"one of {list(values)}", lambda v: v in values, "not-a-choice")


def _strings(v) -> bool:
    return isinstance(v, tuple | list) and all(isinstance(x, str) for x in v)


def _class_ids(v) -> bool:
    ints = all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    return isinstance(v, tuple | list) and ints and len(set(v)) == len(v)


def _fractions(v) -> bool:
    ok = isinstance(v, tuple | list) and all(isinstance(x, int | float) and 0 < x < 1 for x in v)
    return ok and list(v) == sorted(set(v))


BOOL = Domain("true or false", lambda v: isinstance(v, bool), "yes")
TEXT = Domain("a string", lambda v: isinstance(v, str), 3)
NAMES = Domain("a tuple of strings", _strings, (3,))
CLASS_IDS = Domain("distinct class ids >= 0, e.g. (0, 1, 2); () = all", _class_ids, (1, 1))
FRACTIONS = Domain("increasing fractions in (0, 1), e.g. (0.5, 0.75)", _fractions, (0.75, 0.5))

# Every setting of the base config and what it may hold. model.kwargs and task.kwargs are
# checked by the model and the task they configure; names (datasets, models, tasks, eval
# metrics) by their registries.
DOMAINS: dict[str, Domain] = {
    "task.name": TEXT,
    "data.name": TEXT,
    "data.data_dir": TEXT,
    "data.train_split": TEXT,
    "data.eval_split": TEXT,
    "data.batch_size": _int(1),
    "data.eval_batch_size": _int(0),
    "data.image_size": _int(1),
    "data.read_threads": _int(1),
    "data.prefetch": _int(1),
    "data.workers": _int(0),
    "data.device_prefetch": _int(0),
    "data.max_eval_examples": _int(0),
    "data.classes": CLASS_IDS,
    "data.aug.crop_padding": _int(0),
    "data.aug.flip": BOOL,
    "data.aug.vflip": BOOL,
    "data.aug.mixup_alpha": _real(0),
    "data.aug.cutmix_alpha": _real(0),
    "data.aug.noise_std": _real(0),
    "data.aug.blur_prob": _real(0, 1, hi_open=False),
    "data.aug.blur_sigma": _real(0, lo_open=True),
    "data.aug.color_jitter": _real(0, 1, hi_open=False),
    "model.name": TEXT,
    "optim.name": _choice(OPTIMIZERS),
    "optim.learning_rate": _real(0, lo_open=True),
    "optim.momentum": _real(0, 1),
    "optim.nesterov": BOOL,
    "optim.weight_decay": _real(0),
    "optim.weight_decay_on": _choice(DECAY_TARGETS),
    "optim.schedule": _choice(SCHEDULES),
    "optim.warmup_steps": _int(0),
    "optim.boundaries": FRACTIONS,
    "optim.decay_factor": _real(0, lo_open=True, hi_open=True),
    "optim.grad_clip_norm": _real(0),
    "train.num_steps": _int(1),
    "train.num_epochs": _int(0),
    "train.seed": _int(0),
    "train.log_every_steps": _int(1),
    "train.diagnostics_every_steps": _int(0),
    "train.checkpoint_every_steps": _int(1),
    "train.keep_checkpoints": _int(1),
    "train.nan_policy": _choice(NAN_POLICIES),
    "train.record_log": BOOL,
    "train.compute_dtype": _choice(tuple(COMPUTE_DTYPES)),
    "train.conv": _choice(CONV_CHOICES),
    "train.batch_norm": _choice(BATCH_NORM_CHOICES),
    "train.materialize": _choice(MATERIALIZE_CHOICES),
    "train.depthwise": _choice(DEPTHWISE_CHOICES),
    "train.grad_accum_steps": _int(1),
    "train.ema_decay": _real(0, 1),
    "train.compilation_cache_dir": TEXT,
    "eval.every_steps": _int(1),
    "eval.best_metric": TEXT,
    "eval.num_samples": _int(0),
    "init.checkpoint": TEXT,
    "init.source": _choice(("torchvision", "cnnjax")),
    "init.model": TEXT,
    "init.prefix": TEXT,
    "init.exclude": NAMES,
    "init.freeze_backbone": BOOL,
}
CHECKED_ELSEWHERE = ("model.kwargs", "task.kwargs")


def leaves(config, prefix: str = ""):
    """(dotted key, value) of every setting, except those under CHECKED_ELSEWHERE."""
    for key, value in config.items():
        name = prefix + key
        if name in CHECKED_ELSEWHERE:
            continue
        if hasattr(value, "items"):
            yield from leaves(value, name + ".")
        else:
            yield name, value


def check_values(config, num_processes: int = 1, num_devices: int = 1) -> None:
    """ConfigError naming the first setting outside its domain (DOMAINS), or a batch size
    the devices and processes cannot share."""
    for key, value in leaves(config):
        domain = DOMAINS.get(key)
        why = domain.error(value) if domain is not None else None
        if why:
            raise ConfigError(f"{key} {why}")
    d = config.data
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
    size = specs[0].shape[1]
    for name, f in feats.items():
        if getattr(f, "ndim", 0) == 4 and min(f.shape[1:3]) < 1:
            raise ConfigError(
                f"data.image_size {size} is too small for this model: feature map "
                f"'{name}' would be {f.shape[1]}x{f.shape[2]}; use a larger image size"
            )
    # A model whose first map is already 1x1 sees no spatial structure at all, and its
    # BatchNorms then normalise near-constant channels (gradients overflow at step 1).
    maps = maps_by_stride(feats)
    if maps:
        stride, first = next(iter(maps.items()))
        if max(first.shape[1:3]) < 2:
            raise ConfigError(
                f"data.image_size {size} is too small for this model: its first map "
                f"'stride{stride}' would be {first.shape[1]}x{first.shape[2]}; use at least "
                f"{2 * stride} px"
            )


def check_speed(train_cfg, global_batch: int, num_devices: int) -> None:
    """ConfigError if micro-batches (train.grad_accum_steps) cannot split the batch evenly
    over the devices (the choices themselves are in DOMAINS)."""
    k = train_cfg.grad_accum_steps
    if global_batch % (k * num_devices):
        raise ConfigError(
            f"data.batch_size {global_batch} must be divisible by train.grad_accum_steps {k} "
            f"times the {num_devices} device(s), so that every micro-batch splits evenly"
        )
