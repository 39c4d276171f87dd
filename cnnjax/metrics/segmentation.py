"""Semantic segmentation metrics from a confusion matrix: pixel accuracy, mean accuracy,
mean IoU, frequency-weighted IoU and per-class IoU (FCN paper, sec. 5; the conventions of
the PASCAL VOC devkit and torchvision's reference `ConfusionMatrix`).

Conventions (documented because implementations differ):
- Pixels labelled `ignore_index` count nowhere (neither as truth nor as prediction).
- confusion[t, p] counts pixels of true class t predicted as p.
- IoU_c = tp / (tp + fp + fn). A class absent from both labels and predictions has no IoU:
  NaN in `per_class_iou`, left out of `miou` (a class predicted but absent from the labels
  has IoU 0 and counts). Mean accuracy averages recall over classes present in the labels;
  `fwiou` weighs each class's IoU by its share of labelled pixels.
"""

import jax.numpy as jnp
import numpy as np

from cnnjax.metrics.accumulate import MaskedSums


def confusion_matrix(labels, predictions, num_classes: int, ignore_index: int = 255):
    """Per-example confusion matrices. labels, predictions: [B, H, W] int (labels may hold
    `ignore_index`; predictions are in [0, num_classes)) -> [B, K, K] int32 with
    [b, t, p] = pixels of example b with truth t predicted as p. Jittable."""
    labels = labels.reshape(labels.shape[0], -1)
    predictions = predictions.reshape(predictions.shape[0], -1)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    index = jnp.where(valid, labels * num_classes + predictions, num_classes * num_classes)
    counts = jnp.zeros((labels.shape[0], num_classes * num_classes + 1), jnp.int32)
    counts = counts.at[jnp.arange(labels.shape[0])[:, None], index].add(1)
    return counts[:, :-1].reshape(labels.shape[0], num_classes, num_classes)


def from_confusion(confusion) -> dict:
    """confusion [K, K] (truth x prediction; any number type) -> {'pixel_accuracy',
    'mean_accuracy', 'miou', 'fwiou', 'per_class_iou' (list of K floats, NaN where a class
    is in neither labels nor predictions)}."""
    cm = np.asarray(confusion, np.float64)
    tp = np.diag(cm)
    truth, predicted = cm.sum(1), cm.sum(0)
    total = cm.sum()
    union = truth + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        recall = np.where(truth > 0, tp / truth, np.nan)
    present = ~np.isnan(iou)
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_accuracy": float(np.nanmean(recall)) if (truth > 0).any() else float("nan"),
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "fwiou": float((truth[present] * iou[present]).sum() / total) if total else float("nan"),
        "per_class_iou": [float(v) for v in iou],
    }


def evaluate(labels, predictions, *, num_classes: int, ignore_index: int = 255) -> dict:
    """Host-side metrics of label and prediction maps of any (equal) shape, int."""
    labels, predictions = np.asarray(labels).ravel(), np.asarray(predictions).ravel()
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(
            f"label {int(labels[bad][0])} is outside [0, {num_classes}) and is not the "
            f"ignore index {ignore_index}"
        )
    if ((predictions[valid] < 0) | (predictions[valid] >= num_classes)).any():
        raise ValueError(f"predictions must be in [0, {num_classes})")
    cm = np.bincount(
        labels[valid].astype(np.int64) * num_classes + predictions[valid],
        minlength=num_classes * num_classes,
    ).reshape(num_classes, num_classes)
    return from_confusion(cm)


class ConfusionMetrics(MaskedSums):
    """From per-example `confusion` [B, K, K], `loss_sum` [B] (summed over an image's
    labelled pixels), `pixels` [B] (their count) and `mask`: the metrics of the summed
    confusion matrix (exact integer counts) and the loss per labelled pixel."""

    def result(self) -> dict:
        n = self.count
        pixels = float(self.totals["pixels"])
        return {
            "loss": float(self.totals["loss_sum"]) / pixels if pixels else float("nan"),
            **from_confusion(self.totals["confusion"]),
            "num_examples": n,
        }
