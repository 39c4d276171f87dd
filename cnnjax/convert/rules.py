"""Per-family rules that name where each torchvision state-dict entry lives in a cnnjax model.

The default rule is the project's naming convention: a torch module path becomes a flax
path by joining every numeric index to its parent with '_' and every named child with '/'
(`layer1.0.conv1` -> `layer1_0/conv1`, `features.3` -> `features_3`). A family adds regex
renames where its flax names differ, drops torch entries that have no flax home by design,
and marks linear layers that torch feeds with an NCHW flatten (their input rows are
reordered to the NHWC flatten cnnjax uses).
"""

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one torchvision architecture's state dict maps onto its cnnjax twin.

    torchvision_name: the builder in `torchvision.models` (e.g. 'resnet50').
    head: torch module whose weight rows are the classes ('fc'); gives num_classes.
    renames: (regex, replacement) pairs applied in order to the default flax module path.
    drop: regexes (fullmatch) of torch keys that deliberately have no flax home.
    flatten_hw: torch Linear module -> (H, W) of the NCHW map torch flattened into it.
    """

    torchvision_name: str
    head: str
    renames: tuple[tuple[str, str], ...] = ()
    drop: tuple[str, ...] = ()
    flatten_hw: tuple[tuple[str, tuple[int, int]], ...] = ()

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

    def dropped(self, torch_key: str) -> bool:
        return any(re.fullmatch(p, torch_key) for p in self.drop)

    def flatten_shape(self, torch_module: str) -> tuple[int, int] | None:
        return dict(self.flatten_hw).get(torch_module)


# ResNet's projection shortcut is an nn.Sequential(conv, bn) in torchvision.
_RESNET = dict(
    head="fc",
    renames=((r"downsample_0$", "downsample_conv"), (r"downsample_1$", "downsample_bn")),
)

RULES: dict[str, Rule] = {
    f"resnet{d}": Rule(torchvision_name=f"resnet{d}", **_RESNET) for d in (18, 34, 50, 101, 152)
}
