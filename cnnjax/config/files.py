"""Config files and command-line overrides, with one clear error for every bad input.

    config = load("configs/resnet34.py:smoke", ["train.num_steps=10", "model.kwargs.width=32"])

`load` is what `python -m cnnjax.train --config=... --config.x=y` does, for notebooks and
tests too. A config file defines `get_config(arg=None)` returning a locked ConfigDict.
Overrides name existing keys (a typo suggests the closest key); under `model.kwargs` and
`task.kwargs` they may add any option the model or task has (checked against it), since a
config only lists the options it changes.
"""

import ast
import difflib
import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path

import ml_collections

from cnnjax import models, tasks
from cnnjax.errors import ConfigError

OPEN_GROUPS = ("model.kwargs", "task.kwargs")  # overrides may add keys here (checked)


def split_spec(spec: str) -> tuple[str, str | None]:
    """'configs/x.py:smoke,digits' -> ('configs/x.py', 'smoke,digits')."""
    path, sep, arg = str(spec).partition(":")
    return path, (arg if sep else None)


def load(spec, overrides: Iterable[str] | Mapping = (), *, arg: str | None = None):
    """The locked ConfigDict of config file `spec` ('path.py[:arg]'), with `overrides`
    ('group.key=value' strings, or a {dotted key: value} mapping) applied."""
    path, spec_arg = split_spec(spec)
    config = _get_config(Path(path), arg if arg is not None else spec_arg)
    apply_overrides(config, overrides)
    return config


def load_from_argv(argv: list[str], flag_values, config_flag: str = "config"):
    """A CLI's absl flags and config: `flag_values` (absl FlagValues) parses `argv` less its
    `--config.K=V` overrides, then the file named by flag `config_flag` is loaded with them.
    -> (the remaining argv, the locked config); raises absl's flags.Error or ConfigError."""
    overrides = [a.removeprefix("--config.") for a in argv[1:] if a.startswith("--config.")]
    rest = flag_values([a for a in argv if not a.startswith("--config.")])
    return rest, load(flag_values[config_flag].value, overrides)


def _get_config(path: Path, arg: str | None):
    if path.suffix != ".py":
        raise ConfigError(f"config file '{path}' is not a .py file (configs/NAME.py[:args])")
    if not path.is_file():
        near = sorted(str(p) for p in path.parent.glob("*.py")) if path.parent.is_dir() else []
        hint = f"; configs in {path.parent}: {', '.join(near)}" if near else ""
        raise ConfigError(f"config file '{path}' does not exist{hint}")
    spec = importlib.util.spec_from_file_location(f"cnnjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file '{path}' does not parse: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file '{path}' defines no get_config(arg=None)")
    config = module.get_config(arg)
    if not isinstance(config, ml_collections.ConfigDict):
        got = type(config).__name__
        raise ConfigError(f"{path}: get_config returned a {got}, not a ConfigDict")
    return config


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """['a.b=1', 'c=x'] -> {'a.b': '1', 'c': 'x'} (values stay strings until typed)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"config override '{item}' is not KEY=VALUE (e.g. train.seed=1)")
        out[key] = value
    return out


def apply_overrides(config, overrides: Iterable[str] | Mapping) -> None:
    """Sets each dotted key of `overrides` in `config` (locked: only existing keys, plus
    model / task options in OPEN_GROUPS). Names (model.name, task.name) go first, so that
    options are checked against the model and task they end up with."""
    items = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    first = [k for k in items if k in ("model.name", "task.name")]
    for key in first + [k for k in items if k not in first]:
        _set(config, key, items[key])


def _set(config, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise _unknown(config, ".".join(parents[: i + 1]))
        node = node[part]
    group = ".".join(parents)
    if not isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f"config key '{group}' is a value, not a group; cannot set '{key}'")
    if group in OPEN_GROUPS and leaf not in node:
        _check_option(config, group, leaf)
        with node.unlocked():
            node[leaf] = _literal(value) if isinstance(value, str) else value
        return
    if leaf not in node:
        raise _unknown(config, key)
    old = node[leaf]
    with node.ignore_type():
        node[leaf] = _typed(key, value, old) if isinstance(value, str) else value


def _check_option(config, group: str, option: str) -> None:
    if group == "model.kwargs":
        valid = sorted(models.fields(config.model.name) - {"num_classes", "out_channels"})
        what = f"model '{config.model.name}'"
    else:
        valid = sorted(tasks.options(config.task.name))
        what = f"task '{config.task.name}'"
    if option not in valid:
        near = difflib.get_close_matches(option, valid, n=1, cutoff=0.5)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise ConfigError(f"{what} has no option '{option}'.{hint} Its options: {', '.join(valid)}")


def _keys(config, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        out.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            out += _keys(v, f"{prefix}{k}.")
    return out


def _unknown(config, key: str) -> ConfigError:
    near = difflib.get_close_matches(key, _keys(config), n=1, cutoff=0.6)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    groups = ", ".join(k for k, v in config.items() if isinstance(v, ml_collections.ConfigDict))
    return ConfigError(f"unknown config key '{key}'.{hint} Groups: {groups}")


def _literal(text: str):
    """A Python literal when `text` is one ('3', '0.5', '(1, 2)', 'True', 'None'), else the
    string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


_BOOLS = {"true": True, "false": False, "1": True, "0": False}


def _typed(key: str, text: str, old):
    """`text` parsed as the type of the value it replaces."""
    if isinstance(old, bool):
        if text.lower() not in _BOOLS:
            raise ConfigError(f"config.{key} expects true or false, got '{text}'")
        return _BOOLS[text.lower()]
    if isinstance(old, int | float):
        kind = int if isinstance(old, int) else float
        try:
            return kind(text)
        except ValueError:
            value = _literal(text)
            if isinstance(value, int | float) and kind is float:
                return float(value)
            raise ConfigError(f"config.{key} expects {kind.__name__}, got '{text}'") from None
    if isinstance(old, str):
        return text
    value = _literal(text)
    if isinstance(old, tuple | list) and isinstance(value, int | float | str):
        value = (value,)
    if isinstance(old, tuple | list) and not isinstance(value, tuple | list):
        raise ConfigError(f"config.{key} expects a tuple like (1, 2), got '{text}'")
    return tuple(value) if isinstance(old, tuple) else value
