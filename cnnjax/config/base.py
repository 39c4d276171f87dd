"""Shared shape of every config: the groups `data`, `model`, `optim`, `train`, `eval`.

Config files build on `base_config()` and parse their comma-separated argument
(`configs/x.py:digits,smoke`) with `parse_arg`. Nothing here derives one
overridable value from another; the trainer does that.
"""

import ml_collections

from cnnjax.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.data_dir = ""  # '' = $CNNJAX_DATA_DIR or ~/.cache/cnnjax/tensorflow_datasets
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.batch_size = 128
    c.data.eval_batch_size = 0  # 0 = data.batch_size
    c.data.image_size = 32
    c.data.read_threads = 2
    c.data.prefetch = 4
    c.data.aug = ml_collections.ConfigDict()
    c.data.aug.crop_padding = 0  # random crop after zero-padding by this many pixels
    c.data.aug.flip = False  # random horizontal flip
    c.data.aug.noise_std = 0.0  # Gaussian noise, in units of the normalised image
    c.data.aug.blur_prob = 0.0  # probability of a Gaussian blur
    c.data.aug.blur_sigma = 1.0
    c.data.aug.color_jitter = 0.0  # brightness/contrast/saturation strength, 0 = off
    c.data.max_eval_examples = 0  # 0 = the whole eval split

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet34"
    c.model.kwargs = ml_collections.ConfigDict()
    # Weight of each auxiliary head's loss (models returning features['aux_logits'], e.g.
    # googlenet with kwargs.aux_logits=True); 0.3 as in the GoogLeNet paper.
    c.model.aux_loss_weight = 0.3

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # sgd | adamw
    c.optim.learning_rate = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.weight_decay = 1e-4
    c.optim.weight_decay_on = "all"  # all | kernels (skip biases and norm scales)
    c.optim.schedule = "cosine"  # cosine | piecewise | constant
    c.optim.warmup_steps = 0
    c.optim.boundaries = (0.5, 0.75)  # piecewise: fractions of train.num_steps
    c.optim.decay_factor = 0.1
    c.optim.grad_clip_norm = 0.0  # 0 = off

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1000
    c.train.num_epochs = 0  # > 0 overrides num_steps with epochs of the train split
    c.train.seed = 0
    c.train.label_smoothing = 0.0
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 500
    c.train.keep_checkpoints = 2  # the latest N, plus the best by eval.best_metric
    c.train.nan_policy = "stop"  # NaN/Inf step: stop (exit 3, naming it) | skip (count it)
    c.train.record_log = False  # True: workdir/records.jsonl lists each step's record ids
    # Speed (see BENCHMARKS.md). Params, optimizer state and BN statistics stay float32.
    c.train.compute_dtype = "float32"  # float32 | bfloat16: the models' activation dtype
    c.train.conv = "auto"  # auto (im2col on CPU, XLA's conv elsewhere) | xla | patch
    c.train.batch_norm = "cnnjax"  # cnnjax (backward keeps only the input) | flax
    c.train.grad_accum_steps = 1  # > 1 sums gradients over this many micro-batches per step
    c.train.ema_decay = 0.0  # > 0 keeps an EMA of params and BN stats, evaluated as 'eval_ema'
    # '' = $CNNJAX_COMPILATION_CACHE_DIR if set, else <workdir>/../.jax_cache; 'off' = none
    c.train.compilation_cache_dir = ""

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 500
    c.eval.best_metric = "accuracy"

    # Pretrained start (cnnjax/init_from.py); an empty checkpoint trains from scratch.
    c.init = ml_collections.ConfigDict()
    c.init.checkpoint = ""  # local torchvision state dict (.safetensors or .pth)
    c.init.source = "torchvision"
    c.init.exclude = ("fc",)  # modules kept freshly initialised (the head)
    c.init.freeze_backbone = False  # True: train only init.exclude (a linear probe)
    return c


def parse_arg(arg: str | None, allowed: set[str]) -> set[str]:
    """Splits 'digits,smoke' into tokens and rejects any token not in `allowed`."""
    tokens = {t.strip() for t in (arg or "").split(",") if t.strip()}
    unknown = tokens - allowed
    if unknown:
        raise ConfigError(
            f"unknown config argument(s) {sorted(unknown)}; this config accepts {sorted(allowed)}"
        )
    return tokens


def apply_smoke(c: ml_collections.ConfigDict) -> None:
    """Shrinks a config so that it trains and evaluates in seconds on a CPU."""
    c.data.batch_size = 16
    c.data.max_eval_examples = 64
    c.train.num_steps = 4
    c.train.num_epochs = 0
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = 2
    c.eval.every_steps = 4
    c.optim.warmup_steps = 0
