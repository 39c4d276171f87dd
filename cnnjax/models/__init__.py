"""Model registry: `create(name, num_classes=..., **kwargs)` and `names()`.

Every model is a flax.linen Module called as `model.apply(variables, images, train=...)`
on NHWC images, returning `(logits, features)` where `features` maps stable names
(`stem`, `stage1`, ..., `pre_logits`) to arrays.
"""

import dataclasses
from collections.abc import Callable

from cnnjax.errors import ConfigError, unknown_name
from cnnjax.models import (
    alexnet,
    densenet,
    efficientnet,
    googlenet,
    lenet,
    mobilenet,
    preact_resnet,
    resnet,
    resnet_cifar,
    shufflenet,
    squeezenet,
    vgg,
    xception,
)

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
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, *, num_classes: int, **kwargs):
    """Builds registry model `name` with `num_classes` outputs; kwargs set module fields."""
    if name not in _REGISTRY:
        raise unknown_name("model", name, _REGISTRY)
    ctor = _REGISTRY[name]
    module_cls = getattr(ctor, "func", ctor)
    fields = {f.name for f in dataclasses.fields(module_cls)} - {"parent", "name"}
    bad = sorted(set(kwargs) - fields)
    if bad:
        raise ConfigError(
            f"model '{name}' has no option(s) {bad}; valid model.kwargs: {sorted(fields)}"
        )
    return ctor(num_classes=num_classes, **kwargs)
