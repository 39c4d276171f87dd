"""Task registry: `create(name, info, ...)`, `names()`, `options(name)` and `register`.

A task (see `cnnjax.tasks.base.Task`) is everything about a kind of problem that the engine
does not know: feature spec, preprocessing, loss, eval outputs and metrics, predictions and
pictures. The engine picks it from `config.task.name`; `config.task.kwargs` sets its options.
"""

import dataclasses

from cnnjax.data.transforms import Augment
from cnnjax.errors import ConfigError, unknown_name
from cnnjax.tasks.base import Loss, Task, apply_model
from cnnjax.tasks.classification import Classification
from cnnjax.tasks.reconstruction import Reconstruction
from cnnjax.tasks.segmentation import Segmentation
from cnnjax.tasks.ssd import SSD
from cnnjax.tasks.two_stage import TwoStage
from cnnjax.tasks.yolo import YoloV1

__all__ = ["Loss", "Task", "apply_model", "create", "names", "options", "register"]

_TASKS = (Classification, Reconstruction, Segmentation, YoloV1, SSD, TwoStage)
_REGISTRY: dict[str, type] = {t.name: t for t in _TASKS}
_BASE_FIELDS = {f.name for f in dataclasses.fields(Task)}


def names() -> list[str]:
    return sorted(_REGISTRY)


def register(task_cls: type, *, replace: bool = False) -> None:
    """Adds a Task subclass under its `name`."""
    if not (isinstance(task_cls, type) and issubclass(task_cls, Task)):
        raise TypeError(f"{task_cls!r} is not a subclass of cnnjax.tasks.Task")
    if task_cls.name in _REGISTRY and not replace:
        raise ValueError(f"task '{task_cls.name}' is already registered")
    _REGISTRY[task_cls.name] = task_cls


def get(name: str) -> type:
    if name not in _REGISTRY:
        raise unknown_name("task", name, _REGISTRY)
    return _REGISTRY[name]


def options(name: str) -> dict:
    """The task's own options (`task.kwargs`) with their defaults."""
    return {
        f.name: f.default
        for f in dataclasses.fields(get(name))
        if f.name not in _BASE_FIELDS and f.default is not dataclasses.MISSING
    }


def create(name: str, info, *, image_size: int, augment: Augment = Augment(), **kwargs) -> Task:
    """Builds task `name` for a dataset described by `info` (ConfigError if it cannot use
    it or an option is unknown or out of range)."""
    valid = options(name)
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ConfigError(
            f"task '{name}' has no option(s) {bad}; valid task.kwargs: {sorted(valid)}"
        )
    return get(name)(info=info, image_size=image_size, augment=augment, **kwargs)
