"""Run as a script with 8 simulated CPU devices: trains a few steps on a 1-device mesh and
on an 8-device mesh from the same start and prints a JSON comparison (used by tests)."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnnjax.engine import trainer  # noqa: E402
from cnnjax.runtime import sharding
from tests.conftest import load_config  # noqa: E402


def _rel(a, b, base) -> float:
    """||a - b|| / ||a - base|| over every leaf: how far b's update is from a's."""
    la, lb, l0 = (jax.tree.leaves(t) for t in (a, b, base))
    num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(la, lb, strict=True))
    den = sum(float(np.sum((x - z) ** 2)) for x, z in zip(la, l0, strict=True))
    return float(np.sqrt(num / den))


def train(workdir, devices, steps=3, permute_first=False):
    """-> (params after step 1, after `steps`, init params, metrics, compiles). With
    `permute_first` the first batch's examples are reversed (the same update, summed in
    another order)."""
    config = load_config("configs/resnet20_cifar.py", "digits,smoke")
    with config.unlocked():
        # A gentle rate keeps the comparison about rounding, not about chaotic early steps.
        config.optim.learning_rate = 0.01
        # No augmentation: its draws follow an example's place in the batch (the same on one
        # and on eight devices), so the reversed baseline would see other shifts.
        config.data.aug.crop_padding = 0
    run = trainer.setup(config, workdir, mesh=sharding.data_mesh(devices))
    state = trainer.init_state(run)
    init = jax.device_get(state.params)
    compiled = trainer.compile_steps(run)
    it = iter(trainer.train_batches(run))
    losses, first = [], None
    for i in range(steps):
        batch = next(it)
        if i == 0 and permute_first:
            batch = {k: v[::-1] for k, v in batch.items()}
        state, m = compiled.train(state, sharding.to_global(batch, run.mesh))
        losses.append(float(m["loss"]))
        first = jax.device_get(state.params) if i == 0 else first
    metrics = trainer.evaluate(run, compiled, state)
    return (
        first,
        jax.device_get(state.params),
        init,
        {**metrics, "train_losses": losses},
        (compiled.train._cache_size()),
    )


def main(tmp):
    f1, p1, init, m1, c1 = train(f"{tmp}/one", jax.devices()[:1])
    f8, p8, _, m8, c8 = train(f"{tmp}/eight", jax.devices())
    fr, _, _, _, _ = train(f"{tmp}/reversed", jax.devices()[:1], steps=1, permute_first=True)
    pairs = zip(jax.tree.leaves(p1), jax.tree.leaves(p8), strict=True)
    diffs = [float(np.max(np.abs(a - b))) for a, b in pairs]
    print(
        json.dumps(
            {
                "num_devices": jax.device_count(),
                "max_param_diff": max(diffs),
                # How far the 8-device first update is from the 1-device one, and how far a
                # mere reordering of the same batch moves it on one device.
                "first_update_diff_eight": _rel(f1, f8, init),
                "first_update_diff_reordered": _rel(f1, fr, init),
                "eval_one": m1,
                "eval_eight": m8,
                "compiles_one": c1,
                "compiles_eight": c8,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
