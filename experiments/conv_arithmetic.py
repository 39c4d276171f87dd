"""The course's convolution-arithmetic comparisons, computed with cnnjax.analysis.arithmetic.

    .venv/bin/python experiments/conv_arithmetic.py

Prints a markdown table. Every design is a small flax module traced abstractly by
`arithmetic.analyze`, so receptive fields, parameters (no biases) and MACs are the
library's, not typed in: stacked 3x3 convolutions against one large kernel (VGG), the
ResNet bottleneck, GoogLeNet's 1x1 reduction before a 5x5, MobileNet's depthwise split.
"""

import flax.linen as nn

from cnnjax.analysis import arithmetic

# (comparison, input (H, W, C), [(design, ((features, kernel, groups), ...)), ...]); the first
# design of each comparison is the baseline the others are measured against.
COMPARISONS = (
    (
        "two 3x3 vs one 5x5",
        (56, 56, 64),
        [("5x5", ((64, 5, 1),)), ("3x3 -> 3x3", ((64, 3, 1), (64, 3, 1)))],
    ),
    (
        "three 3x3 vs one 7x7 (VGG)",
        (56, 56, 64),
        [("7x7", ((64, 7, 1),)), ("3x3 -> 3x3 -> 3x3", ((64, 3, 1),) * 3)],
    ),
    (
        "ResNet bottleneck at 256 channels",
        (56, 56, 256),
        [
            ("3x3 -> 3x3", ((256, 3, 1), (256, 3, 1))),
            ("1x1 to 64 -> 3x3 -> 1x1 to 256", ((64, 1, 1), (64, 3, 1), (256, 1, 1))),
        ],
    ),
    (
        "GoogLeNet 1x1 reduction, 28x28x192 -> 32",
        (28, 28, 192),
        [("5x5", ((32, 5, 1),)), ("1x1 to 16 -> 5x5", ((16, 1, 1), (32, 5, 1)))],
    ),
    (
        "MobileNet depthwise separable at 256",
        (56, 56, 256),
        [("3x3", ((256, 3, 1),)), ("3x3 depthwise -> 1x1", ((256, 3, 256), (256, 1, 1)))],
    ),
)


class ConvStack(nn.Module):
    """Bias-free 'SAME' convolutions in sequence; `layers` = ((features, kernel, groups), ...)."""

    layers: tuple

    @nn.compact
    def __call__(self, x):
        for i, (features, k, groups) in enumerate(self.layers):
            x = nn.Conv(
                features,
                (k, k),
                padding="SAME",
                feature_group_count=groups,
                use_bias=False,
                name=f"conv{i}",
            )(x)
        return x


def rows() -> list[dict]:
    """One dict per design: comparison, design, input, receptive_field, params,
    params_per_c2 (params / C_in^2), macs, and the params and MACs ratio to the baseline."""
    out = []
    for comparison, shape, designs in COMPARISONS:
        base = None
        for design, layers in designs:
            s = arithmetic.analyze(ConvStack(layers), shape)
            base = base or s
            out.append(
                dict(
                    comparison=comparison,
                    design=design,
                    input="x".join(map(str, shape)),
                    receptive_field=s.receptive_field,
                    params=s.params,
                    params_per_c2=s.params / shape[-1] ** 2,
                    macs=s.macs,
                    params_ratio=s.params / base.params,
                    macs_ratio=s.macs / base.macs,
                )
            )
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        "| comparison | design | input | RF | params | params / C² | MACs | vs baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['comparison']} | {r['design']} | {r['input']} | {r['receptive_field']:g} "
            f"| {r['params']:,} | {r['params_per_c2']:.3g} | {r['macs']:,} "
            f"| {r['params_ratio']:.3f}x params, {r['macs_ratio']:.3f}x MACs |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(rows()))
