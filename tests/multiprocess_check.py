"""Run as a script, once per process: trains a few steps of the digits smoke config with
`jax.distributed` over NUM_PROCESSES local CPU processes (one device each), or alone when
NUM_PROCESSES is 1, and saves losses and parameters for tests/test_distributed.py.

    python -m tests.multiprocess_check OUT_DIR PORT PROCESS_ID NUM_PROCESSES
"""

import json
import sys

from cnnjax.runtime import distributed


def main(out, port, process_id, num_processes):
    if num_processes > 1:
        distributed.maybe_initialize(f"localhost:{port}", num_processes, process_id)
    import jax
    import numpy as np

    from cnnjax.data import pipeline
    from cnnjax.engine import trainer
    from cnnjax.runtime import sharding
    from tests.conftest import load_config

    config = load_config("configs/resnet20_cifar.py", "digits,smoke")
    with config.unlocked():
        config.optim.learning_rate = 0.01  # about rounding, not chaotic early steps
        config.train.compilation_cache_dir = "off"
        # grain seeds each example's augmentation by its position in the process's slice,
        # so random crops differ between 1 and 2 processes; compare without them.
        config.data.aug.crop_padding = 0
    run = trainer.setup(config, f"{out}/workdir{num_processes}")
    state = trainer.init_state(run)
    train_step, eval_step = trainer.compile_steps(run, state)
    ds = pipeline.train_dataset(run.train_source, config.data, run.info, seed=0,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())  # fmt: skip
    it, losses = iter(ds), []
    for _ in range(3):
        state, m = train_step(state, sharding.to_global(next(it), run.mesh))
        losses.append(float(m["loss"]))
    metrics = trainer.evaluate(run, eval_step, state)
    # Params are replicated: every process holds the whole array locally.
    params = {
        jax.tree_util.keystr(k): np.asarray(v.addressable_data(0))
        for k, v in jax.tree_util.tree_leaves_with_path(state.params)
    }
    if jax.process_index() == 0:
        np.savez(f"{out}/params{num_processes}.npz", **params)
        result = {"devices": jax.device_count(), "processes": jax.process_count(),
                  "losses": losses, "eval": metrics}  # fmt: skip
        with open(f"{out}/result{num_processes}.json", "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
