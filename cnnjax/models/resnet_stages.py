"""The stem and stage loop shared by ResNet (resnet.py) and pre-activation ResNet
(preact_resnet.py): torchvision's layer names, `output_stride` by dilation, feature maps.

`output_stride` 8 or 16 is torchvision's `replace_stride_with_dilation` ([False, True, True]
and [False, False, True]): a stage that would take the output stride past it runs at stride 1
and multiplies the dilation by 2 instead; its first block keeps the previous dilation (it
carries the stride in an undilated network), the later blocks use the new one. Parameters
and names do not change, so weights of the stride-32 network load as they are.

Features: 'stride2' [B, H/2, W/2, width] (conv1 + BN + act, before the max-pool), 'stem'
[B, H/4, W/4, width] (after it), 'stage{k}' (the output of stage k) and 'stride{s}' (the last
map at output stride s, i.e. the last stage at s: with output_stride=8 'stride8' is 'stage4').
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.layers import has_classifier

ModuleDef = Any
OUTPUT_STRIDES = (8, 16, 32)


def pad(k: int, dilation: int = 1):
    """torchvision's symmetric padding for a k x k kernel: keeps the size at stride 1."""
    p = dilation * (k - 1) // 2
    return ((p, p), (p, p))


def conv3x3(conv: ModuleDef, features: int, strides: int, dilation: int, name: str):
    """A 3x3 convolution padded by `dilation` (torchvision's conv3x3)."""
    return conv(
        features,
        (3, 3),
        (strides, strides),
        padding=pad(3, dilation),
        kernel_dilation=(dilation, dilation),
        name=name,
    )


def check_output_stride(output_stride: int) -> None:
    if output_stride not in OUTPUT_STRIDES:
        raise ConfigError(
            f"ResNet output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}"
        )


def check_multi_grid(multi_grid: Sequence[int], blocks: int) -> tuple[int, ...]:
    """-> the last stage's unit rates, one per block: () or all ones means no change."""
    grid = tuple(multi_grid)
    if not grid or all(g == 1 for g in grid):
        return (1,) * blocks
    if len(grid) != blocks or not all(isinstance(g, int) and g >= 1 for g in grid):
        raise ConfigError(
            f"multi_grid must hold one positive int per block of the last stage ({blocks}), "
            f"got {multi_grid!r}"
        )
    return grid


def stage_plan(
    num_stages: int, output_stride: int, stride: int = 4
) -> tuple[tuple[int, int, int], ...]:
    """Per stage: (stride of its first block, dilation of its first block, of the others).

    Stage 1 keeps the stem's `stride`, each later stage halves the resolution while that stays
    within `output_stride`, and dilates instead from there on. For 4 stages: output_stride 32
    -> ((1, 1, 1), (2, 1, 1), (2, 1, 1), (2, 1, 1)); 8 -> (..., (2, 1, 1), (1, 1, 2), (1, 2, 4)).
    """
    check_output_stride(output_stride)
    plan, dilation = [], 1
    for i in range(num_stages):
        s, previous = (1 if i == 0 else 2), dilation
        if stride * s > output_stride:
            s, dilation = 1, dilation * s
        stride *= s
        plan.append((s, previous, dilation))
    return tuple(plan)


def conv_and_norm(module, train: bool):
    """(conv, norm) partials of a ResNet module: bias-free convs, torch BatchNorm defaults."""
    conv = functools.partial(module.conv, use_bias=False, dtype=module.dtype)
    norm = functools.partial(
        module.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=module.dtype
    )
    return conv, norm


def stem(x, feats: dict, *, conv: ModuleDef, norm: ModuleDef, act: Callable, width: int):
    """7x7/2 `conv1` + `bn1` + act, 3x3/2 max-pool: [B, H, W, 3] -> [B, H/4, W/4, width]."""
    x = conv(width, (7, 7), (2, 2), padding=pad(7), name="conv1")(x)
    feats["stride2"] = x = act(norm(name="bn1")(x))
    feats["stem"] = x = nn.max_pool(x, (3, 3), (2, 2), padding=pad(3))
    return x


def stages(
    x,
    feats: dict,
    make_block: Callable[[int, int], ModuleDef],
    stage_sizes: Sequence[int],
    *,
    width: int,
    output_stride: int,
    stride: int = 4,
    multi_grid: Sequence[int] = (),
):
    """Runs the stages on the stem's output: x [B, H/4, W/4, C] -> (x [B, H/os, W/os, C'], os).

    Block j of stage i is `make_block(i, j)(features=width * 2**i, strides=..., dilation=...,
    name=f'layer{i + 1}_{j}')`; after stage i its output is recorded as 'stage{i + 1}' and as
    'stride{s}' at its true output stride s (os: the last one, <= output_stride).
    `multi_grid` (DeepLab v3's unit rates, one per block of the last stage; () = all 1)
    multiplies the dilation of block j of the last stage by multi_grid[j].
    """
    plan = stage_plan(len(stage_sizes), output_stride, stride)
    grid = check_multi_grid(multi_grid, stage_sizes[-1])
    for i, (n, (s, first, rest)) in enumerate(zip(stage_sizes, plan, strict=True)):
        for j in range(n):
            unit = grid[j] if i == len(stage_sizes) - 1 else 1
            x = make_block(i, j)(
                features=width * 2**i,
                strides=s if j == 0 else 1,
                dilation=(first if j == 0 else rest) * unit,
                name=f"layer{i + 1}_{j}",
            )(x)
        stride *= s
        feats[f"stage{i + 1}"] = feats[f"stride{stride}"] = x
    return x, stride


def head(module, x, feats: dict):
    """Global average pool ('pre_logits' [B, C]), then the linear `fc` to module.num_classes
    ([B, K] float32 logits); a headless module (num_classes=0) returns 'pre_logits'."""
    feats["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
    if not has_classifier(module.num_classes):
        return x, feats
    logits = nn.Dense(module.num_classes, dtype=module.dtype, name="fc")(x)
    return logits.astype(jnp.float32), feats
