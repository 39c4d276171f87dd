"""Image classification: cross-entropy with label smoothing and auxiliary heads, top-k
accuracy, class predictions.

A model whose training forward returns `features['aux_logits']` (a tuple of [B, K] logits,
e.g. GoogLeNet's auxiliary classifiers) has their cross-entropy added to the loss, each
weighted by `aux_loss_weight`; evaluation uses only the main logits.

`step_grads` ('rows', 'columns' or 'pixels'; '' = off) adds the sequence lecture's diagnostic
to every evaluation: the norm of the gradient of each test example's loss with respect to
its input at each time step of that read (row t, column t or pixel t of the normalised image,
as the recurrent models of models/sequence.py read it), averaged over the test set:
`input_grad_norm` [T] in metrics.jsonl (and `input_grad_norm/{t}` scalars in TensorBoard),
plus `input_grad_first_last` = step 0's over step T-1's, how much the earliest input still
moves the loss relative to the latest (1e-6 means the first steps are forgotten).
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.data import device_augment as DA
from cnnjax.data import transforms as T
from cnnjax.data.features import Feature
from cnnjax.errors import ConfigError, unknown_name
from cnnjax.losses.classification import cross_entropy, soft_cross_entropy
from cnnjax.metrics.classification import ClassificationMetrics, topk_correct
from cnnjax.tasks import plots
from cnnjax.tasks.base import Loss, Task, apply_model


@dataclasses.dataclass
class ClassPredictions:
    """`predict`'s result: labels [N] int, probs [N, K] float32, logits [N, K] float32."""

    labels: np.ndarray
    probs: np.ndarray
    logits: np.ndarray


def require_images(task_name: str, info) -> None:
    """ConfigError unless the dataset stores `image` [H, W, C]."""
    shape = info.image_shape
    if shape is None or len(shape) != 3:
        raise ConfigError(
            f"task '{task_name}' needs images [H, W, C]; dataset '{info.name}' has features "
            f"{sorted(info.features)}"
        )


STEP_READS = ("", "rows", "columns", "pixels")


def step_grad_norms(grads, read: str):
    """grads [B, H, W, C] (of the loss with respect to the image) -> [B, T]: the L2 norm of
    each time step's input under `read` (rows: T = H, columns: T = W, pixels: T = H*W)."""
    sq = jnp.square(grads.astype(jnp.float32))
    if read == "rows":
        per_step = sq.sum((2, 3))
    elif read == "columns":
        per_step = sq.sum((1, 3))
    else:
        per_step = sq.sum(3).reshape(sq.shape[0], -1)
    return jnp.sqrt(per_step)


def host_image_shape(info, image_size: int) -> tuple[int, int, int]:
    """(H, W, C) of the uint8 images the host batches: the stored size when every stored
    image is the same square size (the device resizes it to `image_size`, so the host moves
    8x8 digits, not 224x224 floats), else `image_size` square (the host centre-crops and
    resizes varying images so that a batch stacks)."""
    h, w, c = info.image_shape
    if h is not None and h == w:
        return (int(h), int(w), int(c))
    return (image_size, image_size, int(c))


@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """Softmax classification of `label` from `image`.

    The host batches uint8 images (`host_image_shape`) and labels; on device each step
    resizes to `image_size`, augments (training: crop, flips, colour jitter, blur, noise,
    then mixup / cutmix, which add soft `targets` [B, K] to the batch) and normalises
    (`cnnjax.data.device_augment`). The training accuracy of a mixed batch counts the
    original labels.
    """

    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.3  # each auxiliary head's loss weight (GoogLeNet paper: 0.3)
    step_grads: str = ""  # '', 'rows', 'columns' or 'pixels': see the module docstring

    name: ClassVar[str] = "classification"
    METRICS: ClassVar[dict] = {"accuracy": "max", "top5_accuracy": "max", "loss": "min"}
    best_metric: ClassVar[str] = "accuracy"
    progress_keys: ClassVar[tuple] = ("loss", "accuracy")
    Prediction: ClassVar[type] = ClassPredictions
    mixes: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"task.kwargs.label_smoothing must be in [0, 1), got {self.label_smoothing!r}"
            )
        if self.aux_loss_weight < 0:
            raise ConfigError(
                f"task.kwargs.aux_loss_weight must be non-negative, got {self.aux_loss_weight!r}"
            )
        if self.step_grads not in STEP_READS:
            raise unknown_name("task.kwargs.step_grads", self.step_grads, STEP_READS)

    @classmethod
    def check_info(cls, info) -> None:
        require_images(cls.name, info)
        label = info.features.get("label")
        if label is None or not label.num_classes:
            raise ConfigError(
                f"task 'classification' needs a class 'label'; dataset '{info.name}' has "
                f"features {sorted(info.features)}"
            )

    @property
    def num_classes(self) -> int:
        return int(self.info.num_classes)

    def summary(self) -> str:
        return f"{self.num_classes} classes"

    def features(self) -> dict:
        k = self.num_classes
        return {
            "image": Feature(host_image_shape(self.info, self.image_size), "uint8", 0, 0, 256),
            "label": Feature((), "int32", 0, 0, k),
        }

    def preprocess(self, record: dict, rng) -> dict:
        """Host side: the stored uint8 image (centre-cropped and resized only when it is not
        the host shape) and the label; everything per-pixel happens in `device_preprocess`."""
        index, label = int(record["index"]), int(record.get("label", 0))
        T.check_image(record["image"], index, self.info.image_shape[-1])
        if not 0 <= label < self.num_classes:
            raise ValueError(f"record {index}: label {label} outside [0, {self.num_classes})")
        image, shape = record["image"], host_image_shape(self.info, self.image_size)
        if image.shape != shape:
            image = T.center_crop_resize(image, shape[0])
        return {"image": np.ascontiguousarray(image), "label": np.int32(label)}

    def device_preprocess(self, batch: dict, rng) -> dict:
        """uint8 images -> normalised float32 [B, S, S, C], augmented when `rng` is a key;
        with mixup / cutmix on, also the mixed `targets` [B, K]."""
        norm = {"size": self.image_size, "mean": self.info.mean, "std": self.info.std}
        if rng is None:
            return {**batch, "image": DA.eval_batch(batch["image"], **norm)}
        image = DA.augment_batch(batch["image"], rng, self.augment, **norm)
        if not (self.augment.mixup_alpha or self.augment.cutmix_alpha):
            return {**batch, "image": image}
        onehot = jax.nn.one_hot(batch["label"], self.num_classes, dtype=jnp.float32)
        image, targets = DA.mix(image, onehot, self.augment, rng)
        return {**batch, "image": image, "targets": targets}

    def model_kwargs(self) -> dict:
        return {"num_classes": self.num_classes}

    def loss(self, apply_fn, variables, batch, rng) -> Loss:
        (logits, features), updates = apply_model(
            apply_fn, variables, batch["image"], train=True, rng=rng
        )
        labels, mask = batch["label"], batch["mask"]
        targets = batch.get("targets")
        if targets is None:
            targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
        count = mask.sum()
        main = (soft_cross_entropy(logits, targets, self.label_smoothing) * mask).sum()
        terms = {
            "accuracy": ((topk_correct(logits, labels, 1) * mask).sum(), count),
            "top5_accuracy": ((topk_correct(logits, labels, 5) * mask).sum(), count),
        }
        total = main
        aux_logits = features.get("aux_logits", ())
        if aux_logits:
            aux = sum(soft_cross_entropy(a, targets, self.label_smoothing) for a in aux_logits)
            aux = (aux * mask).sum()
            terms["main_loss"], terms["aux_loss"] = (main, count), (aux, count)
            total = main + self.aux_loss_weight * aux
        return Loss(total, count, terms, updates)

    def eval_outputs(self, apply_fn, variables, batch) -> dict:
        labels = batch["label"]

        def losses(image):
            (logits, _), _ = apply_model(apply_fn, variables, image, train=False)
            return cross_entropy(logits, labels), logits

        if self.step_grads:
            # In eval mode examples are independent (BatchNorm uses its running statistics),
            # so the gradient of the summed loss holds every example's own input gradient.

            def summed(image):
                per, z = losses(image)
                return per.sum(), (per, z)

            (_, (per_example, logits)), grads = jax.value_and_grad(summed, has_aux=True)(
                batch["image"]
            )
        else:
            per_example, logits = losses(batch["image"])
        outputs = {
            "loss": per_example,
            "top1": topk_correct(logits, labels, 1),
            "top5": topk_correct(logits, labels, 5),
            "mask": batch["mask"],
        }
        if self.step_grads:
            outputs["input_grad"] = step_grad_norms(grads, self.step_grads)
        return outputs

    def metric(self) -> ClassificationMetrics:
        return ClassificationMetrics()

    def predict(self, apply_fn, variables, batch) -> dict:
        (logits, _), _ = apply_model(apply_fn, variables, batch["image"], train=False)
        return {
            "labels": jnp.argmax(logits, -1),
            "probs": jax.nn.softmax(logits, -1),
            "logits": logits,
        }

    def visualize(self, batch: dict, prediction: ClassPredictions):
        images = plots.denormalize(batch["image"], self.info.mean, self.info.std)
        names = self.info.features["label"].names or [str(i) for i in range(self.num_classes)]
        n = len(images)
        cols = min(n, 8)
        fig, axes = plots.figure(-(-n // cols), cols)
        for i, ax in enumerate(axes.flat):
            if i >= n:
                ax.axis("off")
                continue
            guess, p = int(prediction.labels[i]), float(prediction.probs[i].max())
            title, color = f"{names[guess]} ({p:.2f})", "black"
            if "label" in batch:
                truth = int(batch["label"][i])
                color = "green" if truth == guess else "red"
                title += f" / {names[truth]}"
            plots.show_image(ax, images[i], title, color)
        return fig
