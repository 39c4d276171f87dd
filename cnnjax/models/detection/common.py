"""What every detector model shares: its registry backbone, run headless, and the maps it
reads by stride."""

from collections.abc import Sequence

from cnnjax.errors import ConfigError
from cnnjax.models.layers import features_at


def backbone_maps(module, x, train: bool, strides: Sequence[int], **kwargs) -> tuple:
    """Runs registry backbone `module.backbone` headless as submodule 'backbone' (with the
    module's dtype, conv and norm where the backbone has those fields, and the module's
    `backbone_kwargs` pairs if it has them, e.g. (('stage_sizes', (2, 2)),): a ResNet-18 cut
    after the stage it is read at) -> its feature maps at `strides` ([B, H/s, W/s, C_s]
    each, in that order).

    ConfigError for num_classes < 1 or a stride the backbone does not produce.
    """
    from cnnjax import models  # the registry imports this package

    if module.num_classes < 1:
        raise ConfigError(f"a detector needs num_classes >= 1, got {module.num_classes}")
    fields = models.fields(module.backbone)
    shared = {
        k: getattr(module, k)
        for k in ("dtype", "conv", "norm")
        if k in fields and getattr(module, k) is not None
    }
    extra = dict(getattr(module, "backbone_kwargs", ()) or ())
    net = models.create(
        module.backbone, num_classes=0, module_name="backbone", **shared, **extra, **kwargs
    )
    _, feats = net(x.astype(module.dtype), train=train)
    return features_at(dict(feats), tuple(strides))
