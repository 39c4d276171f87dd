"""A convolutional autoencoder: a strided-conv encoder, a latent code, a mirrored decoder.

Encoder level i (1..L, L = len(widths)): 3x3 conv stride 2 + BN + act to widths[i-1], then
`convs_per_level - 1` more 3x3 stride-1 conv + BN + act. Bottleneck: with latent_dim > 0 the
[h, w, widths[-1]] map is flattened (row-major h, w, c) -> Dense `latent` to z [latent_dim]
(linear) -> Dense `expand` back to h * w * widths[-1] -> act -> reshape; latent_dim = 0 keeps
the map (fully convolutional). Decoder level j (1..L) doubles the resolution with `upsample`
('nearest' / 'bilinear': the parameter-free ops of cnnjax.ops.upsample; 'transposed': a
learnt 4x4 stride-2 ConvTranspose, channel-preserving, initialised to bilinear upsampling),
then a 3x3 conv + BN + act to widths[L-1-j] (widths[0] for the last level); a 3x3 `head`
conv with bias gives the reconstruction logits (the task applies the sigmoid).

Features: 'encoder{i}' (stride 2**i, also 'stride{2**i}'), 'latent' (z [B, latent_dim], or
the bottleneck map [B, H / 2**L, W / 2**L, widths[-1]] when latent_dim = 0), 'decoder{j}'
(stride 2**(L - j)).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError, unknown_name
from cnnjax.ops import upsample as up

ModuleDef = Any
UPSAMPLES = ("nearest", "bilinear", "transposed")
_PAD = ((1, 1), (1, 1))


class Autoencoder(nn.Module):
    """Encoder-decoder on NHWC images with H and W divisible by 2**len(widths)."""

    out_channels: int
    widths: Sequence[int] = (32, 64)
    latent_dim: int = 32  # 0: fully convolutional bottleneck, no dense layers
    upsample: str = "transposed"  # 'nearest' | 'bilinear' | 'transposed'
    convs_per_level: int = 1  # 3x3 convs per encoder level, the first one strided
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    conv_transpose: ModuleDef = nn.ConvTranspose
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    def _check(self, x) -> None:
        if self.upsample not in UPSAMPLES:
            raise unknown_name("Autoencoder upsample mode", self.upsample, UPSAMPLES)
        if not self.widths or min(self.widths) < 1:
            raise ConfigError(f"Autoencoder widths must be positive ints, got {self.widths!r}")
        if self.out_channels < 1 or self.latent_dim < 0 or self.convs_per_level < 1:
            raise ConfigError(
                f"Autoencoder needs out_channels >= 1, latent_dim >= 0, convs_per_level >= 1; "
                f"got {self.out_channels}, {self.latent_dim}, {self.convs_per_level}"
            )
        div = 2 ** len(self.widths)
        h, w = x.shape[1:3]
        if h % div or w % div:
            raise ConfigError(
                f"Autoencoder with widths {tuple(self.widths)} needs image height and width "
                f"divisible by {div} (2**len(widths)), got {h}x{w}"
            )

    def _upsample(self, x, conv_transpose, name: str):
        """[B, h, w, C] -> [B, 2h, 2w, C]."""
        if self.upsample == "nearest":
            return up.nearest(x, 2)
        if self.upsample == "bilinear":
            return up.bilinear(x, factor=2)
        k = up.bilinear_kernel_size(2)
        return conv_transpose(
            x.shape[-1],
            (k, k),
            (2, 2),
            padding=up.bilinear_padding(2),
            kernel_init=up.bilinear_init(2),
            name=name,
        )(x)

    def _bottleneck(self, x, dense, feats):
        if not self.latent_dim:
            feats["latent"] = x
            return x
        b, h, w, c = x.shape
        z = dense(self.latent_dim, name="latent")(x.reshape(b, h * w * c))
        feats["latent"] = z
        return self.act(dense(h * w * c, name="expand")(z)).reshape(b, h, w, c)

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check(x)
        conv = functools.partial(self.conv, use_bias=False, padding=_PAD, dtype=self.dtype)
        norm = functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )
        conv_transpose = functools.partial(self.conv_transpose, use_bias=False, dtype=self.dtype)
        dense = functools.partial(nn.Dense, dtype=self.dtype)

        def conv_bn_act(y, features, strides, name):
            y = conv(features, (3, 3), (strides, strides), name=f"{name}_conv")(y)
            return self.act(norm(name=f"{name}_bn")(y))

        x = x.astype(self.dtype)
        feats = {}
        for i, width in enumerate(self.widths, start=1):
            for j in range(self.convs_per_level):
                x = conv_bn_act(x, width, 2 if j == 0 else 1, f"encoder{i}_{j}")
            feats[f"encoder{i}"] = feats[f"stride{2**i}"] = x
        x = self._bottleneck(x, dense, feats)
        levels = len(self.widths)
        for j in range(1, levels + 1):
            x = self._upsample(x, conv_transpose, f"decoder{j}_up")
            x = conv_bn_act(x, self.widths[max(levels - 1 - j, 0)], 1, f"decoder{j}")
            feats[f"decoder{j}"] = x
        logits = self.conv(
            self.out_channels, (3, 3), padding=_PAD, use_bias=True, dtype=self.dtype, name="head"
        )(x)
        return logits.astype(jnp.float32), feats


MODELS = {"autoencoder": Autoencoder}
