"""Shared shape of every config: the groups `task`, `data`, `model`, `optim`, `train`, `eval`.

Config files build on `base_config()` (a classification task by default; `set_task` picks
another) and parse their comma-separated argument (`configs/x.py:digits,smoke`) with
`parse_arg`. Nothing here derives one overridable value from another; the trainer does that.
"""

import ml_collections

from cnnjax import tasks
from cnnjax.errors import ConfigError


def set_task(c: ml_collections.ConfigDict, name: str, **kwargs) -> None:
    """Sets `c.task` to task `name` with all its options (defaults, then `kwargs`), so that
    every option can be overridden from the command line (`--config.task.kwargs.x=y`)."""
    options = tasks.options(name)
    bad = sorted(set(kwargs) - set(options))
    if bad:
        raise ConfigError(f"task '{name}' has no option(s) {bad}; options: {sorted(options)}")
    c.task.name = name
    c.task.kwargs = ml_collections.ConfigDict({**options, **kwargs})


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.task = ml_collections.ConfigDict()
    c.task.name = "classification"
    c.task.kwargs = ml_collections.ConfigDict()
    set_task(c, "classification")

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
    # > 0: grain worker processes read, preprocess and batch (decode-heavy data on many
    # cores); 0: read_threads threads in the training process (cnnjax/data/pipeline.py)
    c.data.workers = 0
    c.data.device_prefetch = 1  # train batches transferred to the devices ahead of their step
    c.data.aug = ml_collections.ConfigDict()
    c.data.aug.crop_padding = 0  # random crop after zero-padding by this many pixels
    c.data.aug.flip = False  # random horizontal flip
    c.data.aug.vflip = False  # random vertical (up-down) flip
    c.data.aug.noise_std = 0.0  # Gaussian noise, in units of the normalised image
    c.data.aug.blur_prob = 0.0  # probability of a Gaussian blur
    c.data.aug.blur_sigma = 1.0
    c.data.aug.color_jitter = 0.0  # brightness/contrast/saturation strength, 0 = off
    # batch mixup / cutmix, Beta(alpha, alpha), labels mixed alike; 0 = off (classification)
    c.data.aug.mixup_alpha = 0.0
    c.data.aug.cutmix_alpha = 0.0
    c.data.max_eval_examples = 0  # 0 = the whole eval split
    c.data.classes = ()  # class ids to keep in both splits, e.g. (0, 1, 2, 3, 4); () = all

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet34"
    c.model.kwargs = ml_collections.ConfigDict()

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
    c.train.log_every_steps = 50
    # > 0: every N steps, per-layer gradient norms and activation statistics (engine/diagnostics.py)
    c.train.diagnostics_every_steps = 0
    c.train.checkpoint_every_steps = 500
    c.train.keep_checkpoints = 2  # the latest N, plus the best by eval.best_metric
    c.train.nan_policy = "stop"  # NaN/Inf step: stop (exit 3, naming it) | skip (count it)
    c.train.record_log = False  # True: workdir/records.jsonl lists each step's record ids
    # Speed (see BENCHMARKS.md). Params, optimizer state and BN statistics stay float32.
    c.train.compute_dtype = "float32"  # float32 | bfloat16: the models' activation dtype
    c.train.conv = "auto"  # auto (= onednn on one CPU device, else xla) | onednn | xla | patch
    # auto (on for CPU when the custom call builds, except with oneDNN's convolutions, whose
    # custom calls read their inputs from memory already) | on | off: an XLA fusion barrier on
    # each convolution's input and output gradient, so the backward pass stops recomputing
    # the BatchNorm/ReLU/residual chain per weight gradient (cnnjax/runtime/materialize.py)
    c.train.materialize = "auto"
    # auto (shifted on CPU unless the convolutions are oneDNN's) | shifted | xla: depthwise
    # convolutions as k*k shifted multiplies (XLA:CPU has no depthwise kernel;
    # cnnjax/ops/depthwise.py) or as train.conv computes grouped convolutions
    c.train.depthwise = "auto"
    # auto (= onednn where the convolutions are oneDNN's, else cnnjax) | onednn (oneDNN's
    # kernels, float32 CPU training) | cnnjax (backward keeps only the input) | flax
    c.train.batch_norm = "auto"
    c.train.grad_accum_steps = 1  # > 1 sums gradients over this many micro-batches per step
    c.train.ema_decay = 0.0  # > 0 keeps an EMA of params and BN stats, evaluated as 'eval_ema'
    # '' = $CNNJAX_COMPILATION_CACHE_DIR if set, else <workdir>/../.jax_cache; 'off' = none
    c.train.compilation_cache_dir = ""

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 500
    c.eval.best_metric = ""  # '' = the task's (classification: accuracy); kept by retention
    c.eval.num_samples = 8  # examples drawn with their predictions into samples/*.png; 0 = off

    # Pretrained start (cnnjax/init_from.py); an empty checkpoint trains from scratch.
    c.init = ml_collections.ConfigDict()
    # torchvision: a local state dict (.safetensors or .pth); cnnjax: a run's workdir
    c.init.checkpoint = ""
    c.init.source = "torchvision"  # torchvision | cnnjax
    c.init.model = ""  # registry name the weights convert as ('' = model.name)
    c.init.prefix = ""  # where they go in the model's variables ('' = all; e.g. 'backbone')
    c.init.exclude = ("fc",)  # modules kept freshly initialised (the head)
    c.init.freeze_backbone = False  # True: train only init.exclude (a linear probe)
    return c


def _on_scenes(c: ml_collections.ConfigDict, learning_rate: float) -> None:
    """The digit scenes' shared recipe: 64 px, batch 16, 4 px random shifts, AdamW with a
    cosine schedule and 100 warm-up steps."""
    c.data.name = "digits_scenes"
    c.data.image_size = 64
    c.data.batch_size = 16
    c.data.aug.crop_padding = 4
    c.optim.name = "adamw"
    c.optim.learning_rate = learning_rate
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 100
    c.train.log_every_steps = 50


def segmentation_on_scenes(c: ml_collections.ConfigDict) -> None:
    """Semantic segmentation of the embedded `digits_scenes` (64 px, 11 classes: background
    and the ten digits, 255 ignored), with small random shifts (no flips: a mirrored digit
    is another symbol); AdamW with a cosine schedule."""
    set_task(c, "segmentation")
    _on_scenes(c, learning_rate=2e-3)


def detection_on_scenes(c: ml_collections.ConfigDict, task: str, **task_kwargs) -> None:
    """Object detection (task `task`, a detector) on the embedded `digits_scenes` (64 px,
    0-4 digits per scene, ten classes): ground truth padded to 4 boxes, small random shifts
    (no flips: a mirrored digit is another symbol); AdamW with a cosine schedule."""
    set_task(c, task, **{"max_boxes": 4, **task_kwargs})
    _on_scenes(c, learning_rate=1e-3)


def detection_on_voc(c: ml_collections.ConfigDict, image_size: int) -> None:
    """PASCAL VOC 2007 (tfds `voc/2007`, prepared as ArrayRecord: train on `train+validation`,
    evaluate on `test`) at `image_size` px: 20 classes from `objects/label`, boxes from
    `objects/bbox`, difficult objects dropped from the ground truth, at most 56 boxes per image
    (VOC 2007 has up to 42), flips and scale jitter."""
    c.task.kwargs.boxes_key = "objects/bbox"
    c.task.kwargs.classes_key = "objects/label"
    c.task.kwargs.ignore_key = "objects/is_difficult"
    c.task.kwargs.max_boxes = 56
    c.task.kwargs.too_many = "drop"
    c.task.kwargs.scale_jitter = 0.2
    c.data.name = "voc/2007"
    c.data.train_split = "train+validation"
    c.data.image_size = image_size
    c.data.aug.flip = True
    c.data.aug.crop_padding = 0


SEQUENCE_READS = ("rows", "pixels")


def sequence_read(tokens: set[str]) -> str:
    """The one read ('rows', the default, or 'pixels') a sequence config's arguments name."""
    reads = [t for t in SEQUENCE_READS if t in tokens]
    if len(reads) > 1:
        raise ConfigError(f"choose one read of {list(SEQUENCE_READS)}, got {reads}")
    return reads[0] if reads else "rows"


def sequence_on_digits(c: ml_collections.ConfigDict, model: str, read: str, lr: float) -> None:
    """A recurrent classifier `model` (128 units, one layer) reading the embedded 8x8 digits
    by `read`: AdamW with a cosine schedule at `lr`, gradients clipped at global norm 1
    (backpropagation through time explodes, Pascanu et al. 2013), 2,000 steps row by row and
    4,000 pixel by pixel. Every evaluation logs the per-time-step input gradients of that
    read: a one-way reference (--config.model.kwargs.read=pixels moves it too;
    --config.task.kwargs.step_grads='' turns it off and leaves the read alone)."""
    c.model.name = model
    c.model.kwargs.read = read
    c.task.kwargs.step_grads = c.model.kwargs.get_ref("read") + ""
    c.model.kwargs.hidden_size = 128
    c.model.kwargs.num_layers = 1
    c.model.kwargs.bidirectional = False
    c.data.name = "digits"
    c.data.image_size = 8  # the digits' own size: one row (or pixel) per time step
    c.data.batch_size = 128
    c.optim.name = "adamw"
    c.optim.learning_rate = lr
    c.optim.weight_decay = 1e-4
    c.optim.weight_decay_on = "kernels"
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 100
    c.optim.grad_clip_norm = 1.0
    c.train.num_steps = 2000 if read == "rows" else 4000
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 500
    c.eval.every_steps = 500


def segmentation_on_pets(c: ml_collections.ConfigDict, image_size: int = 128) -> None:
    """Oxford-IIIT Pet's trimaps (tfds `oxford_iiit_pet`, prepared as ArrayRecord): pet vs
    background, the trimap's border pixels ignored; flips allowed."""
    set_task(c, "segmentation", mask_key="segmentation_mask", num_classes=2,
             mask_values=(255, 1, 0, 255), scale_jitter=0.2)  # fmt: skip
    c.data.name = "oxford_iiit_pet"
    c.data.image_size = image_size
    c.data.aug.flip = True
    c.data.aug.crop_padding = 0


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
