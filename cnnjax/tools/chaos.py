"""`./launch.sh chaos [--kills=N]`: a smoke run killed N times (SIGKILL at random points:
during steps, during an async checkpoint save, while old ones are deleted) and restarted
with the same command must end bitwise equal to an uninterrupted run: params, batch_stats,
optimizer state, data iterator state and the record ids of every step. Exit 0 only if so.
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/resnet20_cifar.py:digits,smoke"
MODES = ("step", "save", "cleanup")


def command(workdir: Path, steps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cnnjax.train",
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        f"--config.train.num_steps={steps}",
        "--config.train.checkpoint_every_steps=2",
        "--config.train.log_every_steps=5",
        "--config.eval.every_steps=1000000",
        "--config.train.record_log=True",
        "--config.eval.num_samples=0",
    ]


def _records_step(workdir: Path) -> int:
    from cnnjax.engine.guards import read_records

    rows = read_records(workdir / "records.jsonl")
    return rows[-1]["step"] if rows else 0


def _saving(workdir: Path) -> bool:
    ckpts = workdir / "checkpoints"
    return ckpts.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in ckpts.iterdir())


def kill_once(workdir: Path, steps: int, target: int, mode: str, rng, log) -> bool:
    """Starts the run, SIGKILLs it once it has trained past `target` (mode 'step': after a
    random delay; 'save': as soon as a checkpoint save is in flight; 'cleanup': the moment a
    save is committed, when Orbax deletes checkpoints the retention policy drops).
    -> False if the run finished before it could be killed."""
    proc = subprocess.Popen(
        command(workdir, steps), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log
    )
    while proc.poll() is None and _records_step(workdir) < target:
        time.sleep(0.02)
    if mode in ("save", "cleanup"):
        while proc.poll() is None and not _saving(workdir):
            time.sleep(0.005)
    if mode == "cleanup":
        while proc.poll() is None and _saving(workdir):
            time.sleep(0.001)
    elif mode == "step":
        time.sleep(rng.uniform(0.0, 0.5))
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def final_state(workdir: Path) -> tuple[int, dict, dict]:
    """-> (step, {leaf path: array} of the newest checkpoint, its data iterator state)."""
    import jax

    from cnnjax.engine.checkpointing import Checkpointer, _path_name

    ckpt = Checkpointer(workdir / "checkpoints", create=False)
    try:
        step = ckpt.latest_step()
        state = ckpt.restore_state(step, None)
        data = ckpt.manager.restore(step, args=_data_args())["data"]
    finally:
        ckpt.close()
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return step, {_path_name(p): np.asarray(x) for p, x in leaves}, data


def _data_args():
    import orbax.checkpoint as ocp

    return ocp.args.Composite(data=ocp.args.JsonRestore())


def differences(a: Path, b: Path) -> list[str]:
    """What differs between the final states and record logs of runs `a` and `b`."""
    from cnnjax.engine.guards import read_records

    (step_a, state_a, data_a), (step_b, state_b, data_b) = final_state(a), final_state(b)
    out = [] if step_a == step_b else [f"final step {step_a} != {step_b}"]
    if set(state_a) != set(state_b):
        out.append("state trees differ")
    for k in sorted(set(state_a) & set(state_b)):
        x, y = state_a[k], state_b[k]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            out.append(f"{k} differs")
    if data_a != data_b:
        out.append(f"data iterator state {data_a} != {data_b}")
    if read_records(a / "records.jsonl") != read_records(b / "records.jsonl"):
        out.append("record logs differ")
    return out


def run_chaos(
    kills: int, steps: int, seed: int, root: Path, reference: Path | None = None
) -> tuple[int, list[str]]:
    """-> (kills made, differences from the uninterrupted run). `reference`: the workdir of
    a finished uninterrupted run of `command(..., steps)`; by default one is run first."""
    rng = random.Random(seed)
    chaotic = root / "chaos"
    with open(root / "train.log", "a") as log:
        if reference is None:
            reference = root / "reference"
            subprocess.run(command(reference, steps), cwd=ROOT, check=True, stdout=log, stderr=log)
        made = 0
        targets = sorted(rng.sample(range(1, steps - 1), kills))
        for target in targets:
            mode = rng.choice(MODES)
            made += kill_once(chaotic, steps, target, mode, rng, log)
        done = subprocess.run(command(chaotic, steps), cwd=ROOT, stdout=log, stderr=log)
    if done.returncode != 0:
        return made, [f"the restarted run exited with {done.returncode}; see {root}/train.log"]
    return made, differences(reference, chaotic)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="./launch.sh chaos", description=__doc__)
    p.add_argument("--kills", type=int, default=3, help="number of SIGKILLs (default 3)")
    p.add_argument("--steps", type=int, default=30, help="train steps of the smoke run")
    p.add_argument("--seed", type=int, default=None, help="seed of the kill times")
    p.add_argument("--workdir", default=None, help="kept if given; else a temporary dir")
    args = p.parse_args(argv)
    if args.kills < 1 or args.steps < args.kills + 2:
        p.error(f"need --kills >= 1 and --steps >= kills + 2, got {args.kills}, {args.steps}")
    seed = random.randrange(2**31) if args.seed is None else args.seed
    root = Path(args.workdir or tempfile.mkdtemp(prefix="cnnjax-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    made, diffs = run_chaos(args.kills, args.steps, seed, root)
    equal = "yes" if not diffs else "no (" + "; ".join(diffs[:5]) + ")"
    print(f"chaos: {made} kills, final state bitwise equal: {equal}  [seed {seed}, {root}]")
    if not diffs and args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if not diffs and made == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
