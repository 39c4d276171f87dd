"""DeconvNet (Noh, Hong & Han 2015): a VGG-16 encoder that keeps its max-pooling switches, a
fully connected bottleneck as convolutions, and a mirrored decoder of unpooling (values back to
the switch positions) and "deconvolution" layers, with BN + ReLU after every layer.

Full size (width=1, 21 classes) this is the paper's network: encoder `features_*` with
torchvision's vgg16_bn names (so vgg16_bn weights load by name), `fc6` 7x7 conv 4096 and `fc7`
1x1 conv 4096, `fc6_deconv` 7x7 back to 512, then per stage unpool5..unpool1 followed by
deconv5_1-3 (512, 512, 512), deconv4_1-3 (512, 512, 256), deconv3_1-3 (256, 256, 128),
deconv2_1-2 (128, 64), deconv1_1-2 (64, 64) and the 1x1 `score`. That is 251,772,245
weights and biases (the paper's "252M") plus 33,408 BN scales / offsets. `width` scales every
channel count (round(c * width), at least 1): width=0.125 (8 ... 64 channels, fc 512) trains on
64 px scenes on a CPU.

A stride-1 transposed convolution is a convolution (flax's `ConvTranspose` is a correlation
over the padded input with the kernel as given; Caffe's Deconvolution is the same with a
flipped, in/out-transposed kernel), so the decoder's 3x3 deconvolutions are `conv` layers with
padding 1: the same parameters, and the speed rewrites reach them too. The bottleneck follows
`bottleneck_padding`: 'VALID' is the paper's (fc6 maps pool5's 7x7 to 1x1 and fc6_deconv,
padded by 6, back to 7x7: images of at least 224 px); 'SAME' (the default) pads fc6 and
fc6_deconv by 3 so that any image of at least 32 px works. Pooling is floor-mode 2x2 and
unpooling restores each stage's exact size (the row / column a pool dropped comes back as
zeros), so any size >= 32 px gives logits at the input resolution. No dropout (BN instead).

Features: 'stage1'...'stage5' (encoder maps before each pool), 'pool1'...'pool5', 'fc7',
'fc6_deconv', 'unpool5'...'unpool1' (each unpooling's output), 'deconv5'...'deconv1' (each
decoder stage's output) and 'pre_logits' = 'deconv1'.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.layers import require_min_size
from cnnjax.models.vgg import CONFIGS, M
from cnnjax.ops.unpool import max_pool_with_switches, max_unpool

ModuleDef = Any
FC_WIDTH = 4096
# Decoder widths after unpool5 ... unpool1 (the encoder's VGG-16 stages mirrored).
DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64))
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class DeconvNet(nn.Module):
    """DeconvNet on NHWC images -> (logits [B, H, W, num_classes] float32, features)."""

    num_classes: int
    width: float = 1.0
    bottleneck_padding: str = "SAME"  # 'VALID': the paper's 7x7 -> 1x1 -> 7x7 (>= 224 px)
    act: Any = nn.relu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check(x)
        feats = {}
        x, switches = self._encoder(x.astype(self.dtype), train, feats)
        x = self._bottleneck(x, train, feats)
        for stage, widths in zip(range(5, 0, -1), DECODER, strict=True):
            shape = feats[f"stage{stage}"].shape
            x = feats[f"unpool{stage}"] = max_unpool(x, switches[stage - 1], shape)
            for i, c in enumerate(widths, start=1):
                x = self._layer(x, c, 3, f"deconv{stage}_{i}", train)
            feats[f"deconv{stage}"] = x
        feats["pre_logits"] = x
        score = self.conv(self.num_classes, (1, 1), dtype=self.dtype, name="score")
        return score(x).astype(jnp.float32), feats

    def _check(self, x):
        if self.num_classes < 1:
            raise ConfigError(f"DeconvNet needs num_classes >= 1, got {self.num_classes}")
        if not self.width > 0:
            raise ConfigError(f"DeconvNet width must be > 0, got {self.width}")
        if self.bottleneck_padding not in ("SAME", "VALID"):
            raise ConfigError(
                f"DeconvNet bottleneck_padding must be 'SAME' or 'VALID', got "
                f"{self.bottleneck_padding!r}"
            )
        need = 224 if self.bottleneck_padding == "VALID" else 32
        require_min_size(x, need, f"DeconvNet (bottleneck_padding={self.bottleneck_padding!r})")

    def _channels(self, c: int) -> int:
        return max(1, round(c * self.width))

    def _layer(self, x, features: int, kernel: int, name: str, train: bool, pad=None):
        """conv (with bias, as VGG's) -> BN `{name}_bn` (or `features_{i+1}`) -> act."""
        p = kernel // 2 if pad is None else pad
        x = self.conv(
            self._channels(features),
            (kernel, kernel),
            padding=((p, p), (p, p)),
            dtype=self.dtype,
            kernel_init=_conv_init,
            name=name,
        )(x)
        if name.startswith("features_"):
            norm_name = f"features_{int(name.split('_')[1]) + 1}"
        else:
            norm_name = f"{name}_bn"
        x = self.norm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            name=norm_name,
        )(x)
        return self.act(x)

    def _encoder(self, x, train: bool, feats: dict):
        """VGG-16 with BN (torchvision's vgg16_bn indices) -> (pool5, [switches of pool1..5])."""
        index, stage, switches = 0, 1, []
        for v in CONFIGS[16]:
            if v == M:
                feats[f"stage{stage}"] = x
                x, s = max_pool_with_switches(x, 2, 2)
                feats[f"pool{stage}"] = x
                switches.append(s)
                index, stage = index + 1, stage + 1
                continue
            x = self._layer(x, v, 3, f"features_{index}", train)
            index += 3
        return x, switches

    def _bottleneck(self, x, train: bool, feats: dict):
        """fc6 (7x7) -> fc7 (1x1) -> fc6_deconv (7x7 transposed: a conv padded by 6 or 3)."""
        valid = self.bottleneck_padding == "VALID"
        x = self._layer(x, FC_WIDTH, 7, "fc6", train, pad=0 if valid else 3)
        x = feats["fc7"] = self._layer(x, FC_WIDTH, 1, "fc7", train)
        x = self._layer(x, 512, 7, "fc6_deconv", train, pad=6 if valid else 3)
        feats["fc6_deconv"] = x
        return x


MODELS = {"deconvnet": DeconvNet}
