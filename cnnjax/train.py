"""Command line: python -m cnnjax.train --config=configs/NAME.py[:args] --workdir=DIR.

Multi-host: add --coordinator_address=HOST:PORT --num_processes=N --process_id=I on each
process, or start it with `srun` (see experiments/slurm_train.sbatch).
"""

import os
import signal
import sys

from absl import app, flags
from ml_collections import config_flags

from cnnjax.errors import (
    EXIT_BAD_INPUT,
    EXIT_NONFINITE,
    EXIT_PEER_FAILED,
    EXIT_PREEMPTED,
    ConfigError,
)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:args]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard logs.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's id in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl parsing, but bad flags or config values exit with code 2 and a clear message."""
    try:
        return FLAGS(argv)
    except (flags.Error, ConfigError, AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def main(argv):
    del argv
    from absl import logging

    from cnnjax.engine import guards, trainer
    from cnnjax.runtime import distributed

    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO

    try:
        # Before anything touches a device; under SLURM the flags may be left out.
        distributed.maybe_initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                     FLAGS.process_id)  # fmt: skip
        trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except guards.NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_NONFINITE)
    except guards.Preempted as e:
        print(str(e), file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except guards.PeerFailed as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        # Not sys.exit: JAX's exit hook would wait at a shutdown barrier for the dead peer
        # (until the heartbeat timeout, then abort).
        os._exit(EXIT_PEER_FAILED)


def _exit_preempted_during_startup(signum, frame):
    # Until the trainer installs its own handler nothing has been trained: exit at once.
    print("preempted (SIGTERM) during start-up: nothing to save; rerun to resume",
          file=sys.stderr, flush=True)  # fmt: skip
    os._exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_preempted_during_startup)
    import cnnjax  # noqa: F401  (sets XLA defaults before JAX starts)

    app.run(main, flags_parser=parse_flags)
