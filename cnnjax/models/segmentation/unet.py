"""U-Net (Ronneberger et al. 2015): a contracting path of `depth` max-pooled levels, an
expanding path that upsamples by 2 and concatenates the encoder map of the same level
("copy and crop"), and a 1x1 convolution to the classes.

Each level is two 3x3 convolutions with ReLU; widths double from `width` (64 in the paper:
64, 128, 256, 512, 1024 at depth 4). The default is the common modern variant: 'same'
padding and BatchNorm after every 3x3 (bias-free convolutions), as in most reimplementations
(e.g. milesial/Pytorch-UNet, 31,031,685 parameters for 3 channels and 2 classes). The paper
has no normalisation (`norm=None`: convolutions with bias) and unpadded convolutions
(`padding='valid'`): each encoder map is then center-cropped to its decoder partner
(`center_crop`), and, as the paper's overlap-tile strategy, the image is mirror-padded so
that the output covers it (`valid_sizes`; the paper's 572 px input gives 388 px out) and
the output is cropped back to the input size. `up='transpose'` is the paper's
"up-convolution" (2x2 transposed convolution, stride 2, halving the channels);
`up='bilinear'` resizes bilinearly and halves the channels with a 1x1 convolution.

Input: [B, H, W, C] with H, W divisible by 2**depth for 'same' (any size for 'valid').
Outputs: logits [B, H, W, num_classes] float32; features 'stride{s}' (the encoder maps, s = 1,
2, ... 2**depth, the last one the bottleneck), 'decoder{s}' (the expanding path's map at
stride s) and 'pre_logits' (= 'decoder1').
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.ops import upsample

ModuleDef = Any
PADDINGS = ("same", "valid")
UPSAMPLERS = ("transpose", "bilinear")


def center_crop(x, size: tuple[int, int]):
    """The central size[0] x size[1] window of x [B, H, W, C] -> [B, h, w, C] (U-Net's crop).

    An odd surplus leaves the extra row / column at the bottom / right (offset floor(d / 2)).
    """
    h, w = size
    dh, dw = x.shape[1] - h, x.shape[2] - w
    if dh < 0 or dw < 0:
        raise ValueError(f"center_crop: cannot crop {x.shape[1:3]} to the larger {size}")
    return x[:, dh // 2 : dh // 2 + h, dw // 2 : dw // 2 + w, :]


def valid_sizes(size: int, depth: int = 4) -> tuple[int, int]:
    """Unpadded U-Net: (input size, output size) of the smallest tile whose output >= `size`.

    Every 3x3 'valid' convolution removes 2 px and every level's sizes must be even before
    pooling: depth 4 maps 16 b + 124 px to 16 b - 60 px for a bottleneck of b px (b = 28:
    the paper's 572 -> 388).
    """
    b = 1
    while _out_from_bottom(b, depth) < size:
        b += 1
    inp = b + 4
    for _ in range(depth):
        inp = 2 * inp + 4
    return inp, _out_from_bottom(b, depth)


def overlap_tile_pads(size: int, depth: int = 4) -> tuple[int, int]:
    """Unpadded U-Net: mirror padding (before, after) of a `size`-px side so that the output,
    cropped to its centre `size` px, is aligned with the image (output px r <- image px r).

    The tile is `valid_sizes(size, depth)`: output px k sees input px k + (in - out) / 2 at its
    centre (92 for depth 4: 388 px take (92, 92), the paper's 572 px tile).
    """
    inp, out = valid_sizes(size, depth)
    before = (inp - out) // 2 + (out - size) // 2
    return before, inp - size - before


def _out_from_bottom(b: int, depth: int) -> int:
    out = b
    for _ in range(depth):
        out = 2 * out - 4
    return out


class DoubleConv(nn.Module):
    """(3x3 conv [+ BN] + act) twice: [B, H, W, Cin] -> [B, H', W', features], H' = H for
    'same' padding, H - 4 for 'valid'."""

    features: int
    conv: ModuleDef
    norm: ModuleDef | None
    act: Callable
    padding: str = "same"

    @nn.compact
    def __call__(self, x):
        for i in (1, 2):
            x = self.conv(self.features, (3, 3), padding=self.padding.upper(), name=f"conv{i}")(x)
            if self.norm is not None:
                x = self.norm(name=f"bn{i}")(x)
            x = self.act(x)
        return x


class UNet(nn.Module):
    """U-Net: `encoder_{i}` / `bottleneck` DoubleConvs, `up_{i}` + `decoder_{i}`, `logits`."""

    num_classes: int
    width: int = 64
    depth: int = 4
    padding: str = "same"  # the paper: 'valid' (unpadded) with crop-and-copy
    up: str = "transpose"  # or 'bilinear' (+ 1x1 conv)
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef | None = nn.BatchNorm  # None: the paper's (no normalisation)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check(x)
        size = x.shape[1:3]
        x = self._tile(x.astype(self.dtype))
        conv = functools.partial(self.conv, use_bias=self.norm is None, dtype=self.dtype)
        norm = self.norm and functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )  # torch's BatchNorm2d defaults, as the ResNets
        block = functools.partial(
            DoubleConv, conv=conv, norm=norm, act=self.act, padding=self.padding
        )
        feats, skips = {}, []
        for i in range(self.depth):
            x = block(self.width * 2**i, name=f"encoder_{i}")(x)
            feats[f"stride{2**i}"] = x
            skips.append(x)
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = block(self.width * 2**self.depth, name="bottleneck")(x)
        feats[f"stride{2**self.depth}"] = x
        for i in reversed(range(self.depth)):
            x = self._upsample(x, self.width * 2**i, f"up_{i}")
            x = jnp.concatenate([center_crop(skips[i], x.shape[1:3]), x], axis=-1)
            x = block(self.width * 2**i, name=f"decoder_{i}")(x)
            feats[f"decoder{2**i}"] = x
        feats["pre_logits"] = x
        logits = self.conv(self.num_classes, (1, 1), dtype=self.dtype, name="logits")(x)
        return center_crop(logits, size).astype(jnp.float32), feats

    def _check(self, x) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"UNet needs num_classes >= 1, got {self.num_classes}")
        if self.padding not in PADDINGS:
            raise ConfigError(f"UNet padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.up not in UPSAMPLERS:
            raise ConfigError(f"UNet up must be one of {UPSAMPLERS}, got {self.up!r}")
        if self.depth < 1 or self.width < 1:
            raise ConfigError(f"UNet depth and width must be >= 1, got {self.depth}, {self.width}")
        k = 2**self.depth
        if self.padding == "same" and (x.shape[1] % k or x.shape[2] % k):
            raise ConfigError(
                f"UNet (depth {self.depth}, 'same' padding) needs an image size divisible by "
                f"{k}, got {x.shape[1]}x{x.shape[2]}"
            )

    def _tile(self, x):
        """'valid': mirror-pad x (np.pad's 'symmetric', defined for any size) so that the
        output covers it, the paper's overlap-tile strategy."""
        if self.padding == "same":
            return x
        pads = [overlap_tile_pads(n, self.depth) for n in x.shape[1:3]]
        return jnp.pad(x, ((0, 0), *pads, (0, 0)), mode="symmetric")

    def _upsample(self, x, features: int, name: str):
        """2x up, channels halved: [B, h, w, 2F] -> [B, 2h, 2w, F]."""
        if self.up == "transpose":
            return nn.ConvTranspose(features, (2, 2), (2, 2), dtype=self.dtype, name=name)(x)
        x = upsample.bilinear(x, factor=2)
        return self.conv(features, (1, 1), dtype=self.dtype, name=name)(x)


MODELS = {"unet": UNet}
