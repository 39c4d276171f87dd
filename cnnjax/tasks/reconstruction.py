"""Image reconstruction (autoencoders): reproduce the input image, optionally from a noisy
copy (a denoising autoencoder). Images live in [0, 1]; the model outputs logits and the
reconstruction is their sigmoid. Losses: per-pixel 'mse' or binary cross-entropy 'bce';
metrics: MSE and PSNR.
"""

import dataclasses
import zlib
from typing import ClassVar

import jax
import numpy as np

from cnnjax.data import transforms as T
from cnnjax.data.features import Feature
from cnnjax.errors import ConfigError
from cnnjax.losses.reconstruction import RECONSTRUCTION_LOSSES, per_element
from cnnjax.metrics.reconstruction import ReconstructionMetrics, per_image_errors
from cnnjax.tasks import plots
from cnnjax.tasks.base import Loss, Task, apply_model
from cnnjax.tasks.classification import require_images


@dataclasses.dataclass
class Reconstructions:
    """`predict`'s result: reconstruction [N, H, W, C] float32 in [0, 1]."""

    reconstruction: np.ndarray


@dataclasses.dataclass(frozen=True)
class Reconstruction(Task):
    """`target` = the (augmented) image in [0, 1]; the model sees `image`, the same image
    plus Gaussian noise of std `denoise_std` (clipped to [0, 1]) when denoising. Evaluation
    noise is fixed per record (seeded by its id), so every evaluation sees the same inputs."""

    reconstruction_loss: str = "bce"  # 'mse' | 'bce' (per pixel, averaged per image)
    denoise_std: float = 0.0  # > 0: a denoising autoencoder (noise on the input only)

    name: ClassVar[str] = "reconstruction"
    METRICS: ClassVar[dict] = {"psnr": "max", "mse": "min", "loss": "min"}
    best_metric: ClassVar[str] = "psnr"
    progress_keys: ClassVar[tuple] = ("loss", "psnr")
    Prediction: ClassVar[type] = Reconstructions

    def __post_init__(self):
        super().__post_init__()
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ConfigError(
                f"task.kwargs.reconstruction_loss '{self.reconstruction_loss}' is not one of "
                f"{list(RECONSTRUCTION_LOSSES)}"
            )
        if self.denoise_std < 0:
            raise ConfigError(
                f"task.kwargs.denoise_std must be non-negative, got {self.denoise_std!r}"
            )

    @classmethod
    def check_info(cls, info) -> None:
        require_images(cls.name, info)

    def summary(self) -> str:
        noise = f", denoising (noise std {self.denoise_std})" if self.denoise_std else ""
        return f"{self.reconstruction_loss} loss{noise}"

    def features(self) -> dict:
        shape = (self.image_size, self.image_size, self.info.image_shape[-1])
        return {"image": Feature(shape, "float32"), "target": Feature(shape, "float32")}

    def preprocess(self, record: dict, rng) -> dict:
        index = int(record["index"])
        T.check_image(record["image"], index, self.info.image_shape[-1])
        target = T.to_float(T.center_crop_resize(record["image"], self.image_size))
        if rng is not None:
            target = T.augment_image(target, self.augment, rng)
        image = target
        if self.denoise_std > 0:
            noise_rng = rng if rng is not None else np.random.default_rng(zlib.crc32(b"%d" % index))
            image = np.clip(T.add_noise(target, self.denoise_std, noise_rng), 0.0, 1.0)
        return {
            "image": np.ascontiguousarray(image, np.float32),
            "target": np.ascontiguousarray(target, np.float32),
        }

    def model_kwargs(self) -> dict:
        return {"out_channels": int(self.info.image_shape[-1])}

    def _per_image(self, logits, target):
        """-> per-image loss [B] (mean over pixels) and errors of the reconstruction."""
        loss = per_element(self.reconstruction_loss)(logits, target)
        per_image = loss.reshape(loss.shape[0], -1).mean(-1)
        return per_image, per_image_errors(jax.nn.sigmoid(logits), target)

    def loss(self, apply_fn, variables, batch, rng) -> Loss:
        (logits, _), updates = apply_model(apply_fn, variables, batch["image"], train=True, rng=rng)
        per_image, err = self._per_image(logits, batch["target"])
        mask = batch["mask"]
        count = mask.sum()
        terms = {
            "mse": ((err["squared_error"] * mask).sum(), (err["values"] * mask).sum()),
            "psnr": ((err["psnr"] * mask).sum(), count),
        }
        return Loss((per_image * mask).sum(), count, terms, updates)

    def eval_outputs(self, apply_fn, variables, batch) -> dict:
        (logits, _), _ = apply_model(apply_fn, variables, batch["image"], train=False)
        per_image, err = self._per_image(logits, batch["target"])
        return {"loss": per_image, **err, "mask": batch["mask"]}

    def metric(self) -> ReconstructionMetrics:
        return ReconstructionMetrics()

    def predict(self, apply_fn, variables, batch) -> dict:
        (logits, _), _ = apply_model(apply_fn, variables, batch["image"], train=False)
        return {"reconstruction": jax.nn.sigmoid(logits)}

    def visualize(self, batch: dict, prediction: Reconstructions):
        """Columns of examples: the model's input, its reconstruction, and (when denoising
        and the batch has it) the clean target."""
        rows = [("input", batch["image"]), ("reconstruction", prediction.reconstruction)]
        if self.denoise_std > 0 and "target" in batch:
            rows.append(("clean", batch["target"]))
        n = len(batch["image"])
        fig, axes = plots.figure(len(rows), n)
        for r, (label, images) in enumerate(rows):
            for i in range(n):
                plots.show_image(axes[r, i], images[i], label if i == 0 else "")
        return fig
