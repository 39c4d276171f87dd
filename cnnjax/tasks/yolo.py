"""YOLO v1 as a task: the paper's sum-squared loss with its five named terms
(cnnjax/losses/yolo.py), and decoding into class-specific scores (confidence x class
probability) followed by class-aware NMS. Data, metrics and pictures are `Detection`'s."""

import dataclasses
import functools
from typing import ClassVar

import jax

from cnnjax.errors import ConfigError
from cnnjax.losses import yolo as yolo_loss
from cnnjax.tasks.base import Loss, apply_model
from cnnjax.tasks.detection import Detection


@dataclasses.dataclass(frozen=True)
class YoloV1(Detection):
    """YOLO v1 on an S x S grid with B predictors per cell."""

    grid: int = 7
    boxes_per_cell: int = 2
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5

    name: ClassVar[str] = "yolo_v1"
    progress_keys: ClassVar[tuple] = ("loss", "loss_xy", "loss_obj", "loss_cls")

    def __post_init__(self):
        super().__post_init__()
        for key in ("grid", "boxes_per_cell"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(
                    f"task.kwargs.{key} must be an int >= 1, got {getattr(self, key)!r}"
                )
        if self.lambda_coord < 0 or self.lambda_noobj < 0:
            raise ConfigError(
                f"task.kwargs.lambda_coord / lambda_noobj must be >= 0, got "
                f"{self.lambda_coord}, {self.lambda_noobj}"
            )

    def model_kwargs(self) -> dict:
        return {"num_classes": self.classes, "grid": self.grid,
                "boxes_per_cell": self.boxes_per_cell}  # fmt: skip

    def _grid(self, apply_fn, variables, image, *, train: bool, rng=None):
        (out, _), updates = apply_model(apply_fn, variables, image, train=train, rng=rng)
        want = (self.grid, self.grid, self.boxes_per_cell * 5 + self.classes)
        if out.shape[1:] != want:
            raise ConfigError(
                f"the model's output is {out.shape[1:]} per image; YOLO v1 with grid "
                f"{self.grid}, {self.boxes_per_cell} boxes per cell and {self.classes} classes "
                f"needs {want}"
            )
        return out, updates

    def loss(self, apply_fn, variables, batch, rng) -> Loss:
        out, updates = self._grid(apply_fn, variables, batch["image"], train=True, rng=rng)
        fn = functools.partial(
            yolo_loss.yolo_v1_loss,
            boxes_per_cell=self.boxes_per_cell,
            num_classes=self.classes,
            lambda_coord=self.lambda_coord,
            lambda_noobj=self.lambda_noobj,
        )
        per_image = jax.vmap(fn)(out, batch["boxes"], batch["box_classes"], batch["box_valid"] > 0)
        m = batch["mask"]
        n = m.sum()
        sums = {k: (v * m).sum() for k, v in per_image.items()}
        return Loss(sum(sums.values()), n, {k: (v, n) for k, v in sums.items()}, updates)

    def detect(self, apply_fn, variables, batch) -> dict:
        out, _ = self._grid(apply_fn, variables, batch["image"], train=False)

        def one(grid_out):
            boxes, scores = yolo_loss.decode(grid_out, self.boxes_per_cell, self.classes)
            return self.select(boxes, scores)

        return jax.vmap(one)(out)
