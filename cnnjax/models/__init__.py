"""Model registry: `create(name, **kwargs)`, `names()`, `fields(name)` and `register`.

Every model is a flax.linen Module called as `model.apply(variables, images, train=...)`
on NHWC images, returning `(outputs, features)`: a classifier's outputs are its logits, and
`features` maps stable names (`stem`, `stage1`, ..., `pre_logits`) to arrays. The task
decides what a model is built with (a classifier gets `num_classes`); config kwargs set the
rest of its fields.
"""

import dataclasses
from collections.abc import Callable

from cnnjax.errors import ConfigError, unknown_name
from cnnjax.models import (
    alexnet,
    autoencoder,
    densenet,
    detection,
    efficientnet,
    googlenet,
    lenet,
    mobilenet,
    preact_resnet,
    resnet,
    resnet_cifar,
    segmentation,
    sequence,
    shufflenet,
    squeezenet,
    vgg,
    xception,
)
from cnnjax.models.layers import ACTIVATIONS

_REGISTRY: dict[str, Callable] = {
    **resnet.MODELS,
    **resnet_cifar.MODELS,
    **lenet.MODELS,
    **alexnet.MODELS,
    **vgg.MODELS,
    **googlenet.MODELS,
    **densenet.MODELS,
    **squeezenet.MODELS,
    **preact_resnet.MODELS,
    **xception.MODELS,
    **mobilenet.MODELS,
    **efficientnet.MODELS,
    **shufflenet.MODELS,
    **autoencoder.MODELS,
    **segmentation.MODELS,
    **detection.MODELS,
    **sequence.MODELS,
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def register(name: str, ctor: Callable, *, replace: bool = False) -> None:
    """Adds a model (a Module class or a functools.partial of one) under `name`."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"model '{name}' is already registered")
    _REGISTRY[name] = ctor


def fields(name: str) -> set[str]:
    """The module fields of registry model `name` (what `create` accepts)."""
    if name not in _REGISTRY:
        raise unknown_name("model", name, _REGISTRY)
    ctor = _REGISTRY[name]
    module_cls = getattr(ctor, "func", ctor)
    return {f.name for f in dataclasses.fields(module_cls)} - {"parent", "name"}


# Fields a registry entry fixes that decide what the network *is* (a plain net has no
# shortcuts): `create` refuses to change them, since the run would report the entry's name for
# another network (e.g. a config's shortcut='A' silently turning plain56_cifar residual).
IDENTITY_FIELDS = frozenset({"shortcut", "depth"})


def create(name: str, *, module_name: str | None = None, **kwargs):
    """Builds registry model `name`; kwargs (e.g. `num_classes=10`) set module fields.
    `module_name`: the flax name of the module (a submodule when created inside another
    module's `nn.compact` method, e.g. 'backbone')."""
    valid = fields(name)
    bad = sorted(set(kwargs) - valid)
    if bad:
        raise ConfigError(
            f"model '{name}' has no option(s) {bad}; valid model.kwargs: {sorted(valid)}"
        )
    if isinstance(kwargs.get("act"), str):  # an activation named in a config
        if kwargs["act"] not in ACTIVATIONS:
            raise ConfigError(
                f"model.kwargs.act: {unknown_name('activation', kwargs['act'], ACTIVATIONS)}"
            )
        kwargs["act"] = ACTIVATIONS[kwargs["act"]]
    fixed = getattr(_REGISTRY[name], "keywords", {})
    for key in sorted(IDENTITY_FIELDS & set(kwargs) & set(fixed)):
        if kwargs[key] != fixed[key]:
            raise ConfigError(
                f"model '{name}' is defined by {key}={fixed[key]!r}; model.kwargs.{key}="
                f"{kwargs[key]!r} would build a different network under its name. Remove "
                f"that option (a config that sets it for another model may have a variant "
                f"for this one, e.g. configs/resnet20_cifar.py:plain) or pick the registry "
                f"entry you mean"
            )
    if module_name is not None:
        kwargs["name"] = module_name
    return _REGISTRY[name](**kwargs)
