"""The scale of the signal through the batchnorm experiment's nets at initialisation: the
standard deviation of each stage's output and of the logits for 16 random 16-px inputs,
with and without BatchNorm (train-mode batch statistics where it is on).

    .venv/bin/python experiments/batchnorm/activation_scale.py

Prints a markdown table. The convolutions use flax's default LeCun-normal initialisation
(variance 1 / fan_in), which halves the variance at every ReLU layer when nothing
re-normalises it.
"""

import jax
import jax.numpy as jnp

from cnnjax import models

STAGES = ("stem", "stage1", "stage2", "stage3")


def rows() -> list[dict]:
    x = jax.random.normal(jax.random.key(0), (16, 16, 16, 3))
    out = []
    for name in ("plain20_cifar", "plain44_cifar"):
        for bn in (True, False):
            model = models.create(name, num_classes=10, batch_norm=bn)
            variables = model.init(jax.random.key(1), x, train=False)
            if bn:
                (logits, feats), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
            else:
                logits, feats = model.apply(variables, x, train=False)
            stds = {k: float(jnp.std(feats[k])) for k in STAGES}
            out.append({"model": name, "batch_norm": bn, **stds, "logits": float(jnp.std(logits))})
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        "| model | BatchNorm | " + " | ".join(f"std {k}" for k in STAGES) + " | std logits |",
        "|---|---|" + "---:|" * (len(STAGES) + 1),
    ]
    for r in table:
        cells = " | ".join(f"{r[k]:.3g}" for k in (*STAGES, "logits"))
        lines.append(f"| {r['model']} | {'on' if r['batch_norm'] else 'off'} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(rows()))
