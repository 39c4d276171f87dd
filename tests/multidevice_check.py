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

from cnnjax.data import pipeline  # noqa: E402
from cnnjax.engine import trainer  # noqa: E402
from cnnjax.runtime import sharding
from tests.conftest import load_config  # noqa: E402


def train(workdir, devices, steps=3):
    config = load_config("configs/resnet20_cifar.py", "digits,smoke")
    with config.unlocked():
        # A gentle rate keeps the comparison about rounding, not about chaotic early steps.
        config.optim.learning_rate = 0.01
    run = trainer.setup(config, workdir, mesh=sharding.data_mesh(devices))
    state = trainer.init_state(run)
    train_step, eval_step = trainer.compile_steps(run, state)
    it = iter(pipeline.train_dataset(run.train_source, config.data, run.info, seed=0))
    losses = []
    for _ in range(steps):
        state, m = train_step(state, sharding.to_global(next(it), run.mesh))
        losses.append(float(m["loss"]))
    metrics = trainer.evaluate(run, eval_step, state)
    return (
        jax.device_get(state.params),
        {**metrics, "train_losses": losses},
        train_step._cache_size(),
    )


def main(tmp):
    p1, m1, c1 = train(f"{tmp}/one", jax.devices()[:1])
    p8, m8, c8 = train(f"{tmp}/eight", jax.devices())
    pairs = zip(jax.tree.leaves(p1), jax.tree.leaves(p8), strict=True)
    diffs = [float(np.max(np.abs(a - b))) for a, b in pairs]
    print(
        json.dumps(
            {
                "num_devices": jax.device_count(),
                "max_param_diff": max(diffs),
                "eval_one": m1,
                "eval_eight": m8,
                "compiles_one": c1,
                "compiles_eight": c8,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
