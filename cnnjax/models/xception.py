"""Xception (Chollet 2017): depthwise-separable convolutions in entry, middle and exit flows.

Keras' `keras.applications.Xception` is the reference (22,855,952 trainable parameters with
1000 classes at 299 px, the paper's figure): unpadded 3x3 stem convolutions, separable
convolutions without bias each followed by BN (eps 1e-3, Keras' default), 3x3/2 'SAME'
max-pools, and strided 1x1 conv + BN projections on the entry/exit residuals.

Names follow timm's `legacy_xception` (the PyTorch port of the Keras weights) under this
project's rule: a numeric index joins its parent with '_', a named child is a '/' scope
(`block1.rep.0.pointwise` -> `block1/rep_0/pointwise`). `conv1`, `bn1`, `conv2`, `bn2`;
`block1`...`block12` (entry 1-3, middle 4-11, exit 12), each with `skip` + `skipbn` when it
changes shape and its `rep` Sequential indices (ReLUs and the max-pool count, as in torch);
`conv3`, `bn3`, `conv4`, `bn4` (separable); `fc`. A separable conv is `conv1` (depthwise) and
`pointwise`.

`num_classes=0` builds the backbone without `fc` (outputs: 'pre_logits').

Features ('stem', 'stage1'...'stage4' by output stride, see layers.feature_name, each also as
'stride2'...'stride32'; the unpadded stem makes each map a little smaller than H / stride):
at 299 px 'stem' [B, 147, 147, 64], 'stage1' 74x74x128, 'stage2' 37x37x256, 'stage3'
19x19x728 (after the middle flow), 'stage4' 10x10x2048 (after `conv4`/`bn4`/ReLU);
'pre_logits' [B, 2048].
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models.layers import has_classifier, record_map, require_min_size

ModuleDef = Any
MIN_SIZE = 32  # the two unpadded stem convs and five /2 reductions need >= 1 px at the end


class SeparableConv(nn.Module):
    """Depthwise 3x3 `conv1`, then 1x1 `pointwise`: x [B, H, W, Cin] -> [B, H, W, features]."""

    features: int
    conv: ModuleDef

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        x = self.conv(cin, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=cin, name="conv1")(
            x
        )
        return self.conv(self.features, (1, 1), name="pointwise")(x)


class Block(nn.Module):
    """`reps` ReLU-SepConv-BN triples (+ 3x3/2 max-pool when strided) added to the shortcut."""

    features: int
    reps: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    start_with_relu: bool = True
    grow_first: bool = True

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        widths = [self.features if self.grow_first else cin] * (self.reps - 1)
        widths = [self.features] + widths if self.grow_first else widths + [self.features]
        # torch's `rep` Sequential: [ReLU, SepConv, BN] * reps, minus the first ReLU if asked.
        index = 0 if self.start_with_relu else -1
        y = x
        for w in widths:
            if index >= 0:
                y = self.act(y)
            y = SeparableConv(w, self.conv, name=f"rep_{index + 1}")(y)
            y = self.norm(name=f"rep_{index + 2}")(y)
            index += 3
        if self.strides != 1:
            y = nn.max_pool(y, (3, 3), (self.strides,) * 2, padding="SAME")
        if cin == self.features and self.strides == 1:
            return y + x
        s = (self.strides, self.strides)
        skip = self.norm(name="skipbn")(self.conv(self.features, (1, 1), s, name="skip")(x))
        return y + skip


class Xception(nn.Module):
    """Xception on NHWC images (299 px in the paper); `middle_repeats` middle-flow blocks."""

    num_classes: int
    middle_repeats: int = 8
    bn_eps: float = 1e-3
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        require_min_size(x, MIN_SIZE, "Xception")
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(
            self.norm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=self.bn_eps,
            dtype=self.dtype,
        )
        x = conv(32, (3, 3), (2, 2), padding="VALID", name="conv1")(x.astype(self.dtype))
        x = self.act(norm(name="bn1")(x))
        x = conv(64, (3, 3), padding="VALID", name="conv2")(x)
        x = self.act(norm(name="bn2")(x))
        feats, stride = {}, 2
        record_map(feats, x, stride)
        block = functools.partial(Block, conv=conv, norm=norm, act=self.act)
        specs = [(128, 2, 2, False, True), (256, 2, 2, True, True), (728, 2, 2, True, True)]
        specs += [(728, 3, 1, True, True)] * self.middle_repeats + [(1024, 2, 2, True, False)]
        for i, (features, reps, strides, start_relu, grow_first) in enumerate(specs):
            x = block(features, reps, strides, start_with_relu=start_relu, grow_first=grow_first,
                      name=f"block{i + 1}")(x)  # fmt: skip
            stride *= strides
            record_map(feats, x, stride)
        x = self.act(norm(name="bn3")(SeparableConv(1536, conv, name="conv3")(x)))
        x = self.act(norm(name="bn4")(SeparableConv(2048, conv, name="conv4")(x)))
        record_map(feats, x, stride)
        feats["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
        if not has_classifier(self.num_classes):
            return x, feats
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return logits.astype(jnp.float32), feats


MODELS = {"xception": Xception}
