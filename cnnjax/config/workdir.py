"""The workdir's `config.json` (written once, checked on every resume) and
`dataset_info.json` (what a notebook needs to use the run without the dataset); both are
read as data only."""

import json
from pathlib import Path

import ml_collections

from cnnjax.errors import ConfigError

# Changing any of these under a run makes its checkpoints meaningless for the new config.
INCOMPATIBLE = (
    "task.name",
    "data.name",
    "data.image_size",
    "data.classes",  # another subset: the data iterator's state means other records
    "data.workers",  # grain worker processes compose batches (and their state) differently
    "model.name",
    "model.kwargs",
    "train.ema_decay",  # 0 <-> > 0 changes the checkpoint's layout
)


# Values of settings that runs written before the setting existed had implicitly.
_IMPLICIT = {"task.name": "classification", "data.classes": [], "data.workers": 0}


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return _IMPLICIT.get(dotted, d) if d == {} else d


def config_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def make(workdir: Path) -> None:
    """Creates `workdir` (the last check before a run writes to it); ConfigError if it is a
    file or cannot be created."""
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; choose another path")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"--workdir {workdir} cannot be created ({e.strerror}: {e.filename})"
        ) from e


def has_checkpoints(workdir: Path) -> bool:
    """True once a run in `workdir` saved a checkpoint (a step directory)."""
    ckpts = workdir / "checkpoints"
    return ckpts.is_dir() and any(p.name.isdigit() and p.is_dir() for p in ckpts.iterdir())


def check_and_write(workdir: Path, config, *, write: bool = True) -> list[str]:
    """Raises ConfigError if `workdir` holds a run whose config differs in what matters.
    A workdir without a checkpoint holds no run to protect: its config is replaced.

    Returns the harmless differences (e.g. eval frequency), one line each, for logging.
    """
    path = workdir / "config.json"
    new = config_dict(config)
    if not path.exists() or not has_checkpoints(workdir):
        if write:
            write_config(workdir, config)
        return []
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); move it aside to start anew") from e
    bad = [k for k in INCOMPATIBLE if _get(old, k) != _get(new, k)]
    if bad:
        diffs = "; ".join(f"{k}: {_get(old, k)!r} -> {_get(new, k)!r}" for k in bad)
        raise ConfigError(
            f"workdir {workdir} holds a run with an incompatible config ({diffs}). Use another "
            "--workdir, or restore those values to resume."
        )
    return _diff(old, new)


def write_config(workdir: Path, config) -> None:
    """Atomically (re)writes `workdir/config.json`."""
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / "config.json.tmp"
    tmp.write_text(json.dumps(config_dict(config), indent=2, sort_keys=True))
    tmp.replace(workdir / "config.json")


def _diff(old, new, prefix="") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def load_config(workdir) -> ml_collections.ConfigDict:
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise ConfigError(f"{workdir} has no config.json: not a cnnjax run directory")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


INFO_FILE = "dataset_info.json"


def write_info(workdir: Path, info) -> None:
    """Atomically writes the run's DataInfo (`cnnjax.data.DataInfo`) as JSON."""
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / (INFO_FILE + ".tmp")
    tmp.write_text(info.to_json())
    tmp.replace(workdir / INFO_FILE)


def load_info(workdir):
    """The DataInfo a run was trained on, or None for runs written before it was saved."""
    from cnnjax.data.sources import DataInfo

    path = Path(workdir) / INFO_FILE
    if not path.exists():
        return None
    try:
        return DataInfo.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a valid dataset description ({e})") from e
