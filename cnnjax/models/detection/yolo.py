"""YOLO v1 (Redmon et al. 2016): one network pass predicts an S x S grid, each cell B boxes with
a confidence and C class probabilities -> [B, S, S, B * 5 + C] (the layout and the loss are in
cnnjax/losses/yolo.py).

The paper's detector is 20 ImageNet-pretrained convolution layers, then four 3x3 convolutions
of 1024 channels (the second with stride 2), a 4096-unit fully connected layer with dropout
0.5 and a fully connected layer to S * S * (B * 5 + C), leaky ReLU (slope 0.1) everywhere
but the linear output. Here the 20 layers are a registry backbone chosen by name, read at
`feature_stride`; the head is the paper's, with its widths as fields (BatchNorm after the head
convolutions unless `norm` is None, which is the paper's).

`head='conv'` replaces the fully connected layers by a 1x1 convolution on an S x S map (the
four head convolutions all at stride 1, so the backbone map at `feature_stride` must be
S x S): every cell is predicted from its own neighbourhood with shared weights, as YOLO v2
later did. Without ImageNet pretraining the paper's fully connected head, which must learn
every cell's mapping separately, generalises slowly on small data; the digit-scene config
uses the convolutional head and `:paper` the fully connected one.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.detection.common import backbone_maps

ModuleDef = Any
HEADS = ("fc", "conv")


class YoloV1(nn.Module):
    """YOLO v1 on registry `backbone`: `head_conv{1..4}`, then `fc1` (+ dropout) and `fc2`,
    or with head='conv' the 1x1 convolution `predict`."""

    num_classes: int
    backbone: str = "resnet18"
    backbone_kwargs: tuple = ()  # (field, value) pairs for the backbone
    feature_stride: int = 32
    grid: int = 7
    boxes_per_cell: int = 2
    head_width: int = 1024
    hidden: int = 4096
    dropout: float = 0.5
    negative_slope: float = 0.1
    head: str = "fc"  # the paper's fully connected head | 'conv' (1x1 convolution per cell)
    conv: ModuleDef = nn.Conv
    norm: ModuleDef | None = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.head not in HEADS:
            raise ConfigError(f"YOLO v1 head must be one of {HEADS}, got {self.head!r}")
        (y,) = backbone_maps(self, x, train, (self.feature_stride,))
        if self.head == "conv" and y.shape[1:3] != (self.grid, self.grid):
            raise ConfigError(
                f"YOLO v1's conv head needs a {self.grid}x{self.grid} map (the grid); the "
                f"backbone's map at stride {self.feature_stride} is {y.shape[1]}x{y.shape[2]}"
            )
        strides = (1, 2, 1, 1) if self.head == "fc" else (1, 1, 1, 1)
        act = functools.partial(nn.leaky_relu, negative_slope=self.negative_slope)
        conv = functools.partial(self.conv, use_bias=self.norm is None, dtype=self.dtype)
        feats = {"backbone": y}
        for i, stride in enumerate(strides, start=1):
            y = conv(self.head_width, (3, 3), (stride, stride), padding=((1, 1), (1, 1)),
                     name=f"head_conv{i}")(y)  # fmt: skip
            if self.norm is not None:
                y = self.norm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                              dtype=self.dtype, name=f"head_bn{i}")(y)  # fmt: skip
            y = act(y)
        feats["head"] = y
        depth = self.boxes_per_cell * 5 + self.num_classes
        if self.head == "conv":
            out = conv(depth, (1, 1), use_bias=True, name="predict")(y)
            return out.astype(jnp.float32), feats
        y = act(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(y.reshape(y.shape[0], -1)))
        feats["pre_logits"] = y = nn.Dropout(self.dropout, deterministic=not train)(y)
        out = nn.Dense(self.grid * self.grid * depth, dtype=self.dtype, name="fc2")(y)
        return out.reshape(-1, self.grid, self.grid, depth).astype(jnp.float32), feats


MODELS = {"yolo_v1": YoloV1}
