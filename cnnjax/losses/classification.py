"""Softmax cross-entropy with label smoothing, reduced over a mask."""

import jax.numpy as jnp
import optax


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """logits [B, K] float, labels [B] int -> per-example loss [B] float32."""
    num_classes = logits.shape[-1]
    return soft_cross_entropy(
        logits, jnp.eye(num_classes, dtype=jnp.float32)[labels], label_smoothing
    )


def soft_cross_entropy(logits, targets, label_smoothing: float = 0.0):
    """logits [B, K] float, targets [B, K] distributions (one-hot, or mixed by mixup /
    cutmix) -> per-example loss [B] float32; smoothing mixes the targets with the uniform
    distribution (timm smooths mixed targets the same way)."""
    targets = targets.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def classification_loss(logits, labels, mask, label_smoothing: float = 0.0):
    """Mean cross-entropy over examples with mask 1.

    logits [B, K], labels [B] int32, mask [B] float32 -> (loss [], {'loss_ce': [], 'accuracy': []}).
    """
    per_example = cross_entropy(logits, labels, label_smoothing)
    denom = jnp.maximum(mask.sum(), 1.0)
    loss = (per_example * mask).sum() / denom
    accuracy = ((jnp.argmax(logits, -1) == labels) * mask).sum() / denom
    return loss, {"loss_ce": loss, "accuracy": accuracy}
