"""Top-k correctness on device and an exact host-side accumulator."""

import jax
import jax.numpy as jnp
import numpy as np


def topk_correct(logits, labels, k: int):
    """logits [B, K], labels [B] -> [B] float32, 1 where the label is among the top k."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    return (top == labels[:, None]).any(-1).astype(jnp.float32)


def eval_sums(logits, labels, mask, per_example_loss):
    """Sums over the masked batch: {'loss', 'top1', 'top5', 'count'} each [] float32."""
    return {
        "loss": (per_example_loss * mask).sum(),
        "top1": (topk_correct(logits, labels, 1) * mask).sum(),
        "top5": (topk_correct(logits, labels, 5) * mask).sum(),
        "count": mask.sum(),
    }


class Sums:
    """Adds dicts of scalars across batches on the host (float64, exact for counts)."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    def add(self, sums: dict) -> None:
        for k, v in jax.device_get(sums).items():
            self.totals[k] = self.totals.get(k, 0.0) + float(np.asarray(v, np.float64))

    def classification(self) -> dict[str, float]:
        """-> {'loss', 'accuracy', 'top5_accuracy', 'num_examples'} over everything added."""
        n = self.totals.get("count", 0.0)
        if n == 0:
            raise ValueError("no examples were evaluated (the eval split is empty after masking)")
        return {
            "loss": self.totals["loss"] / n,
            "accuracy": self.totals["top1"] / n,
            "top5_accuracy": self.totals["top5"] / n,
            "num_examples": int(n),
        }
