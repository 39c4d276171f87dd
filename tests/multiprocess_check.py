"""Run as a script, once per process: trains a few steps of the digits smoke config with
`jax.distributed` over NUM_PROCESSES local CPU processes (one device each), or alone when
NUM_PROCESSES is 1, and saves losses and parameters for tests/test_distributed.py.

    python -m tests.multiprocess_check OUT_DIR PORT PROCESS_ID NUM_PROCESSES [reversed]

`reversed` (one process only) reverses the examples of the first batch: the same update
summed in another order, the baseline the 2-process result is compared with.
"""

import json
import sys

from cnnjax.runtime import distributed


def _host(params):
    import jax
    import numpy as np

    # Params are replicated: every process holds the whole array locally.
    return {
        jax.tree_util.keystr(k): np.asarray(v.addressable_data(0))
        for k, v in jax.tree_util.tree_leaves_with_path(params)
    }


def main(out, port, process_id, num_processes, reverse=False):
    if num_processes > 1:
        distributed.maybe_initialize(f"localhost:{port}", num_processes, process_id)
    import jax
    import numpy as np

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
    compiled = trainer.compile_steps(run)
    it, losses = iter(trainer.train_batches(run)), []
    init, first = _host(state.params), None
    for i in range(1 if reverse else 3):
        batch = next(it)
        if reverse:
            batch = {k: v[::-1] for k, v in batch.items()}
        state, m = compiled.train(state, sharding.to_global(batch, run.mesh))
        losses.append(float(m["loss"]))
        first = _host(state.params) if i == 0 else first
    tag = f"{num_processes}{'r' if reverse else ''}"
    if reverse:
        np.savez(f"{out}/first{tag}.npz", **first)
        return
    metrics = trainer.evaluate(run, compiled, state)
    params = _host(state.params)
    if jax.process_index() == 0:
        np.savez(f"{out}/params{num_processes}.npz", **params)
        np.savez(f"{out}/first{num_processes}.npz", **first)
        np.savez(f"{out}/init{num_processes}.npz", **init)
        result = {"devices": jax.device_count(), "processes": jax.process_count(),
                  "losses": losses, "eval": metrics}  # fmt: skip
        with open(f"{out}/result{num_processes}.json", "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
         reverse=sys.argv[5:] == ["reversed"])  # fmt: skip
