"""Multi-host start-up: one `jax.distributed.initialize` per process, before any computation.

Under SLURM (`srun`, one task per host, or per GPU) JAX's own cluster detection supplies the
coordinator, process count and id; elsewhere pass all three explicitly (the same coordinator
address on every process). Afterwards `jax.devices()` lists every process's devices, the
trainer's ('data',) mesh spans them all, and each process reads its own share of every
global batch (cnnjax/data/pipeline.py).
"""

import os

import jax

from cnnjax.errors import ConfigError


def in_slurm_job(env=None) -> bool:
    """True inside a SLURM step that runs more than one task (`srun -n N`, N > 1)."""
    env = os.environ if env is None else env
    try:
        return "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1
    except ValueError:
        return False


def slurm_local_device_ids(env=None) -> list[int] | None:
    """The GPUs a SLURM task drives: None (JAX's choice) unless every node runs one task.

    JAX's SLURM detection assumes one process per GPU and restricts each process to the GPU
    at index SLURM_LOCALID (jax-ml/jax#16788), so with one task per node (the layout of
    experiments/slurm_train.sbatch) each node would train on its first GPU only. Then the
    task takes every GPU SLURM gave it: indices 0..n-1 of CUDA_VISIBLE_DEVICES (set by
    --gpus-per-node). On CPUs, or with no CUDA_VISIBLE_DEVICES, JAX's default is kept.
    """
    env = os.environ if env is None else env
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    try:
        nodes = int(env.get("SLURM_STEP_NUM_NODES") or env["SLURM_NNODES"])
        one_per_node = int(env["SLURM_NTASKS"]) == nodes
    except (KeyError, ValueError):
        return None
    return list(range(len(visible))) if one_per_node and visible else None


def check_args(coordinator_address, num_processes, process_id) -> bool:
    """-> True when explicit arguments ask for several processes; ConfigError if incomplete."""
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    if all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ConfigError(
            f"multi-process training needs --coordinator_address, --num_processes and "
            f"--process_id together; missing {missing}"
        )
    if num_processes < 1:
        raise ConfigError(f"--num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(
            f"--process_id must be in [0, {num_processes}) for {num_processes} processes, "
            f"got {process_id}"
        )
    if ":" not in coordinator_address:
        raise ConfigError(f"--coordinator_address must be HOST:PORT, got {coordinator_address!r}")
    return num_processes > 1


def maybe_initialize(coordinator_address=None, num_processes=None, process_id=None) -> bool:
    """Initialises JAX's distributed runtime when asked to or inside a multi-task SLURM job.

    Returns True if it did; a single plain process is left alone (returns False).
    """
    if check_args(coordinator_address, num_processes, process_id):
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        return True
    if in_slurm_job():
        # Coordinator (the step's first node), process count and id: SLURM_* variables,
        # via jax's cluster detection (tests/test_slurm.py runs it under srun -n 2).
        jax.distributed.initialize(local_device_ids=slurm_local_device_ids())
        return True
    return False
