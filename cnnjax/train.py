"""Command line: python -m cnnjax.train --config=configs/NAME.py[:args] --workdir=DIR
[--config.group.key=value ...].

Overrides are applied by `cnnjax.config.files` (typed like the value they replace; model and
task options may be added: `--config.model.kwargs.width=32`). Every bad config, argument or
override exits 2 with one line naming it, before anything is built.
Multi-host: add --coordinator_address=HOST:PORT --num_processes=N --process_id=I on each
process, or start it with `srun` (see experiments/slurm_train.sbatch).
"""

import os
import signal
import sys

from absl import app, flags

from cnnjax.errors import (
    EXIT_BAD_INPUT,
    EXIT_NONFINITE,
    EXIT_PEER_FAILED,
    EXIT_PREEMPTED,
    ConfigError,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file (configs/NAME.py[:args]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard logs.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's id in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])


CONFIG = None  # the loaded config (parse_flags)


def parse_flags(argv):
    """absl parsing of the plain flags; the config file with its `--config.*` overrides is
    loaded here, so that a bad flag, file, argument or override exits 2 with one line."""
    global CONFIG
    try:
        from cnnjax.config import files

        rest, CONFIG = files.load_from_argv(argv, FLAGS)
    except (flags.Error, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    return rest


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
        trainer.train_and_evaluate(CONFIG, FLAGS.workdir)
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
