"""The one error type for bad user input: raised before any compilation, exit code 2."""

import difflib
from collections.abc import Iterable

EXIT_BAD_INPUT = 2  # also: checkpoints exist but none can be restored
EXIT_NONFINITE = 3  # a NaN/Inf step with train.nan_policy='stop'
EXIT_PEER_FAILED = 4  # multi-process: another process of the run died (see guards.PeerFailed)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM, a checkpoint was saved; rerun to resume


class ConfigError(ValueError):
    """A config value, dataset, model or workdir that cannot be used as given."""


def closest(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix naming the closest valid choice, or ''."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    choices = sorted(choices)
    return ConfigError(
        f"unknown {kind} '{name}'.{closest(name, choices)} Valid {kind}s: {', '.join(choices)}"
    )
