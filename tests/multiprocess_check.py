"""Run as a script, once per process: trains a few steps of the digits smoke config with
`jax.distributed` over NUM_PROCESSES local CPU processes (one device each), or alone when
NUM_PROCESSES is 1, and saves losses and parameters for tests/test_distributed.py.

    python -m tests.multiprocess_check OUT_DIR PORT PROCESS_ID NUM_PROCESSES [reversed]
    srun -n 2 python -m tests.multiprocess_check OUT_DIR slurm

`reversed` (one process only) reverses the examples of the first batch: the same update
summed in another order, the baseline the 2-process result is compared with. `slurm`: the
processes are the tasks of a SLURM step, jax.distributed initialised from its variables
(tests/test_slurm.py). `check_two_match_one(OUT_DIR)` compares the runs.
"""

import json
import sys
from pathlib import Path

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
    if port == "slurm":
        assert distributed.maybe_initialize(), "not a multi-task SLURM step"
    elif num_processes > 1:
        distributed.maybe_initialize(f"localhost:{port}", num_processes, process_id)
    import jax
    import numpy as np

    num_processes = jax.process_count()

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
        # the same kernels in both runs: 'auto' is oneDNN's convolutions and BatchNorm in one
        # CPU process and XLA's with two (cnnjax/models/patch_conv.py), which differ by float
        # rounding in BatchNorm's variance; this compares the distribution, not the kernels
        config.train.conv = "xla"
        config.train.batch_norm = "cnnjax"
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


def check_two_match_one(out) -> None:
    """Asserts that the 2-process run in `out` matches the 1-process one (result2.json and
    result1.json, first*.npz) within what reordering the first batch moves it."""
    import numpy as np

    out = Path(out)
    one = json.loads((out / "result1.json").read_text())
    two = json.loads((out / "result2.json").read_text())
    assert (one["processes"], two["processes"], two["devices"]) == (1, 2, 2)
    # As in the 1-vs-8-device test (tests/test_trainer.py): two processes read the batch in
    # another order and reduce over two shards; the first update may move no further from
    # one process's than a reordering of the same batch on one process moves it.
    np.testing.assert_allclose(one["losses"], two["losses"], rtol=1e-2)
    init, f1, f2, fr = (np.load(out / f"{n}.npz") for n in ("init1", "first1", "first2",
                                                             "first1r"))  # fmt: skip
    assert sorted(f1.files) == sorted(f2.files) == sorted(fr.files)
    norm = lambda a, b: np.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in a.files))
    step = norm(f1, init)
    assert norm(f1, f2) / step < 3 * norm(f1, fr) / step + 1e-4, (norm(f1, f2), norm(f1, fr))
    assert one["eval"]["num_examples"] == two["eval"]["num_examples"] == 64
    assert abs(one["eval"]["loss"] - two["eval"]["loss"]) < 1e-2 * max(1.0, one["eval"]["loss"])


if __name__ == "__main__":
    if sys.argv[2:] == ["slurm"]:
        main(sys.argv[1], "slurm", None, None)
    else:
        main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
             reverse=sys.argv[5:] == ["reversed"])  # fmt: skip
