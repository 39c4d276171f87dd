"""Per-family rules that name where each torchvision state-dict entry lives in a cnnjax model.

The default rule is the project's naming convention: a torch module path becomes a flax
path by joining every numeric index to its parent with '_' and every named child with '/'
(`layer1.0.conv1` -> `layer1_0/conv1`, `features.3` -> `features_3`). A family adds regex
renames where its flax names differ and names torch entries that may lack a flax home
(heads that a model variant leaves out). Models that flatten a feature map before a linear
layer (AlexNet, VGG, GoogLeNet's aux heads) flatten in torch's C, H, W order, so linear
weights need only a transpose.
"""

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one torchvision architecture's state dict maps onto its cnnjax twin.

    torchvision_name: the builder in `torchvision.models` (e.g. 'resnet50').
    head: torch module whose weight rows are the classes ('fc'); gives num_classes.
    renames: (regex, replacement) pairs applied in order to the default flax module path.
    optional: regexes (fullmatch) of torch keys skipped when the flax model lacks them.
    """

    torchvision_name: str
    head: str
    renames: tuple[tuple[str, str], ...] = ()
    optional: tuple[str, ...] = ()

    def flax_module(self, torch_module: str) -> str:
        """'layer1.0.downsample.0' -> 'layer1_0/downsample_conv' (for the resnet rule)."""
        parts: list[str] = []
        for part in torch_module.split("."):
            if part.isdigit() and parts:
                parts[-1] += f"_{part}"
            else:
                parts.append(part)
        path = "/".join(parts)
        for pattern, repl in self.renames:
            path = re.sub(pattern, repl, path)
        return path

    def is_optional(self, torch_key: str) -> bool:
        return any(re.fullmatch(p, torch_key) for p in self.optional)


def _family(names, **rule) -> dict[str, Rule]:
    return {n: Rule(torchvision_name=n, **rule) for n in names}


RULES: dict[str, Rule] = {
    # ResNet's projection shortcut is an nn.Sequential(conv, bn) in torchvision.
    **_family(
        [f"resnet{d}" for d in (18, 34, 50, 101, 152)],
        head="fc",
        renames=((r"downsample_0$", "downsample_conv"), (r"downsample_1$", "downsample_bn")),
    ),
    **_family(["alexnet"], head="classifier.6"),
    **_family([f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")], head="classifier.6"),
    # torchvision builds GoogLeNet with aux classifiers; cnnjax only with aux_logits=True.
    **_family(["googlenet"], head="fc", optional=(r"aux[12]\..*",)),
    # `features` is a Sequential of named children (features_denseblock1/denselayer1/...);
    # torchvision's released files still say `norm.1`/`conv.2` for `norm1`/`conv2`.
    **_family(
        [f"densenet{d}" for d in (121, 161, 169, 201)],
        head="classifier",
        renames=((r"^features/", "features_"), (r"/(norm|conv)_([12])$", r"/\1\2")),
    ),
    **_family(["squeezenet1_0", "squeezenet1_1"], head="classifier.1"),
    **_family(["mobilenet_v2"], head="classifier.1"),
    **_family([f"efficientnet_b{i}" for i in range(8)], head="classifier.1"),
    **_family([f"shufflenet_v2_x{w}" for w in ("0_5", "1_0", "1_5", "2_0")], head="fc"),
}


# torchvision.models.segmentation, kept apart from RULES (whose names() the classification
# tools and tests walk): `backbone.*` is the dilated ResNet (under params['backbone']), the
# heads are Sequentials whose indices become names (deeplab.py); aux_classifier converts when
# the model is built with aux=True. deeplabv3_resnet101 / fcn_resnet101: backbone='resnet101'.
_BACKBONE = ((r"downsample_0$", "downsample_conv"), (r"downsample_1$", "downsample_bn"))
_FCN_HEAD = tuple(
    (rf"^{head}_{i}$", rf"{head}/{flax}")
    for head in ("classifier", "aux_classifier")
    for i, flax in ((0, "conv"), (1, "bn"), (4, "logits"))
)
_ASPP = (
    (r"^classifier_0/convs_4_1$", "classifier/aspp/pooling/conv"),  # convs.4.0 is the pool
    (r"^classifier_0/convs_4_2$", "classifier/aspp/pooling/bn"),
    (r"^classifier_0/(convs_\d|project)_0$", r"classifier/aspp/\1/conv"),
    (r"^classifier_0/(convs_\d|project)_1$", r"classifier/aspp/\1/bn"),
    (r"^classifier_1$", "classifier/conv"),
    (r"^classifier_2$", "classifier/bn"),
    (r"^classifier_4$", "classifier/logits"),
)
SEGMENTATION_RULES: dict[str, Rule] = {
    "deeplabv3": Rule(
        torchvision_name="deeplabv3_resnet50",
        head="classifier.4",
        renames=_BACKBONE + _ASPP + _FCN_HEAD[3:],
        optional=(r"aux_classifier\..*",),
    ),
    "fcn_resnet": Rule(
        torchvision_name="fcn_resnet50",
        head="classifier.4",
        renames=_BACKBONE + _FCN_HEAD,
        optional=(r"aux_classifier\..*",),
    ),
}
