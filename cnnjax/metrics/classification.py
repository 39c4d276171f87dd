"""Top-k correctness on device and the exact accumulator of classification metrics."""

import jax
import jax.numpy as jnp

from cnnjax.metrics.accumulate import MaskedSums


def topk_correct(logits, labels, k: int):
    """logits [B, K], labels [B] int -> [B] float32, 1 where the label is among the top k."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    return (top == labels[:, None]).any(-1).astype(jnp.float32)


class ClassificationMetrics(MaskedSums):
    """From per-example `loss`, `top1`, `top5` (each [B]) and `mask`: {'loss', 'accuracy',
    'top5_accuracy', 'num_examples'} over the real examples; with per-example `input_grad`
    [B, T] also 'input_grad_norm' (its mean, T floats) and 'input_grad_first_last' (step 0's
    mean over step T-1's)."""

    def result(self) -> dict:
        out = {
            "loss": self.mean("loss"),
            "accuracy": self.mean("top1"),
            "top5_accuracy": self.mean("top5"),
            "num_examples": self.count,
        }
        if "input_grad" in self.totals:
            norms = self.totals["input_grad"] / self.count
            out["input_grad_norm"] = [float(v) for v in norms]
            out["input_grad_first_last"] = (
                float(norms[0] / norms[-1]) if norms[-1] else float("nan")
            )
        return out
