"""Per-element reconstruction losses (optax style): the task sums them with masks."""

import jax
import jax.numpy as jnp
import optax

RECONSTRUCTION_LOSSES = ("mse", "bce")


def squared_error(logits, target):
    """sigmoid(logits) vs target, both [..., C]; target in [0, 1] -> [...] float32 squared
    error per element (the model outputs logits; images live in [0, 1])."""
    return jnp.square(jax.nn.sigmoid(logits.astype(jnp.float32)) - target.astype(jnp.float32))


def binary_cross_entropy(logits, target):
    """Sigmoid binary cross-entropy of logits against soft targets in [0, 1], per element
    [...] float32 (numerically stable: optax.sigmoid_binary_cross_entropy)."""
    return optax.sigmoid_binary_cross_entropy(
        logits.astype(jnp.float32), target.astype(jnp.float32)
    )


def per_element(name: str):
    """The per-element loss called `name` ('mse' | 'bce')."""
    return {"mse": squared_error, "bce": binary_cross_entropy}[name]
