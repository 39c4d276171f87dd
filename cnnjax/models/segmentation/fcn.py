"""FCN-32s / 16s / 8s (Long, Shelhamer & Darrell 2015): a classification backbone made fully
convolutional, per-class scores at stride 32, and the skip architecture that adds scores of
pool4 (FCN-16s) and pool3 (FCN-8s) before upsampling with transposed convolutions.

Layers, with the Caffe reference's names (shelhamer/fcn.berkeleyvision.org `voc-fcn*s`):
`backbone` (any registry backbone, built headless with this model's dtype/conv/norm), `fc6`
(7x7 conv, `fc_width` = 4096) and `fc7` (1x1 conv) each + ReLU + dropout 0.5, `score_fr` (1x1
to the classes), then per skip s: `upscore2` / `upscore_pool4` (2x transposed convolutions),
`score_pool4` / `score_pool3` (1x1 on the backbone map at stride s) fused by addition into
`fuse_pool4` / `fuse_pool3`, and the final `upscore` (32x, FCN-32s), `upscore16` or
`upscore8`. Every transposed convolution is k = 2f - f % 2 wide, without bias and initialised
to bilinear upsampling (`cnnjax.ops.upsample.bilinear_init`); they are parameters (the paper
learns the 2x ones, the reference Caffe nets fix them with lr_mult 0: an optimizer choice).

On VGG backbones the skips read `pool3`/`pool4`/`pool5`; on any other backbone they read
`stride8`/`stride16`/`stride32`, and fc6 is a 3x3 conv (there is no 7x7 classifier layer to
convert; torchvision's FCN head on ResNets is a 3x3 conv too); `fc_width=0` drops fc6/fc7.

Differences from Caffe: every convolution is 'same'-padded (no conv1 pad=100, fc6 pads 3), so a
stride-s map has H / s pixels whose centres line up with the upsampled scores' and every crop
(`cnnjax.ops.align.crop_offset`) has offset 0 where Caffe needs 5, 9 and 19 / 27 / 31. Any image
whose sides 32 divides gives logits at its own size. Otherwise floor-mode pooling (VGG) makes an
upsampled map smaller than the map it must match and the model raises ConfigError naming the
sizes; backbones with ceil-sized maps (stride-2 convolutions) are cropped to the input instead.
fc6/fc7 start He-normal (fan-in), score_fr from N(0, 0.01) (the paper zero-initialises it; a
random start gives the backbone gradients from the first step) and score_pool3/4 at zero, so
a new skip leaves the coarser net's predictions unchanged (the paper's staged training).
`at_once=True` scales pool4 by 0.01 and pool3 by 1e-4 before scoring, as in Caffe's
`voc-fcn8s-atonce` (training all skips at once from the start).

Features: the backbone's maps, 'fc6', 'fc7' (ReLU outputs; at 224 px [B, 7, 7, fc_width], whose
centre pixel is VGG's classifier pre_logits after `from_classifier`), 'score_fr',
'fuse_pool4', 'fuse_pool3', and 'pre_logits' = the map score_fr reads.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.layers import features_at
from cnnjax.ops.align import crop_offset
from cnnjax.ops.upsample import bilinear_init, bilinear_kernel_size, bilinear_padding

ModuleDef = Any
# He (fan-in) keeps fc6/fc7's activations at scale for any fc_width (VGG's N(0, 0.01) is tuned
# to 25088 / 4096 inputs and fades at narrow widths).
_fc_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
_score_init = nn.initializers.normal(0.01)


def build_backbone(parent: nn.Module, backbone: str, name: str = "backbone", **fields):
    """Registry model `backbone`, headless, as submodule `name` of `parent` (call inside its
    `nn.compact` method). Of `fields` (dtype, conv, norm, ...) only those the backbone has
    are passed, so a speed rewrite of the parent reaches every backbone that can take it."""
    from cnnjax import models  # here: cnnjax.models imports this package

    own = models.fields(backbone)
    kwargs = {k: v for k, v in fields.items() if k in own}
    del parent  # created inside its compact method, the backbone attaches to it
    return models.create(backbone, num_classes=0, module_name=name, **kwargs)


def _pool_name(stride: int) -> str:
    return f"pool{int(math.log2(stride))}"


class FCN(nn.Module):
    """FCN on NHWC images -> (logits [B, H, W, num_classes] float32, features)."""

    num_classes: int
    backbone: str = "vgg16"
    skips: tuple[int, ...] = ()  # strides fused by addition: () 32s, (16,) 16s, (16, 8) 8s
    fc_width: int = 4096  # fc6/fc7 channels; 0: score the stride-32 map directly
    dropout_rate: float = 0.5
    at_once: bool = False
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check()
        maps, vgg, feats = self._backbone(x, train)
        y = feats["pre_logits"] = self._fc(maps[32], vgg, train, feats)
        feats["score_fr"] = y = self._score(y, "score_fr", _score_init)
        stride = 32
        for i, s in enumerate(self.skips):
            name = "upscore2" if i == 0 else f"upscore_{_pool_name(stride)}"
            up = self._upsample(y, stride // s, name)
            skip = maps[s] * (0.01 ** math.log2(32 // s) if self.at_once else 1.0)
            skip = self._score(skip, f"score_{_pool_name(s)}", nn.initializers.zeros)
            y = feats[f"fuse_{_pool_name(s)}"] = self._align(up, skip, _pool_name(s), x) + skip
            stride = s
        y = self._upsample(y, stride, "upscore" if stride == 32 else f"upscore{stride}")
        return self._align(y, x, "the input", x).astype(jnp.float32), feats

    def _check(self):
        if self.num_classes < 1:
            raise ConfigError(f"FCN needs num_classes >= 1, got {self.num_classes}")
        s = list(self.skips)
        ok = all(2 <= v < 32 and v & (v - 1) == 0 for v in s) and s == sorted(set(s))[::-1]
        if not ok:
            raise ConfigError(
                f"FCN skips must be decreasing powers of two below 32 (e.g. (16, 8)), got {s}"
            )
        if self.fc_width < 0:
            raise ConfigError(f"FCN fc_width must be >= 0 (0: no fc6/fc7), got {self.fc_width}")

    def _backbone(self, x, train: bool):
        """-> ({stride: map}, whether it is a VGG, the backbone's features dict copied)."""
        net = build_backbone(self, self.backbone, dtype=self.dtype, conv=self.conv, norm=self.norm)
        _, feats = net(x, train=train)
        feats = dict(feats)
        vgg = "pool5" in feats
        source = {f"stride{2**k}": feats[f"pool{k}"] for k in range(1, 6)} if vgg else feats
        strides = (32, *self.skips)
        return dict(zip(strides, features_at(source, strides), strict=True)), vgg, feats

    def _fc(self, x, vgg: bool, train: bool, feats: dict):
        if self.fc_width == 0:
            return x
        for name, k in (("fc6", 7 if vgg else 3), ("fc7", 1)):
            p = k // 2
            conv = self.conv(
                self.fc_width,
                (k, k),
                padding=((p, p), (p, p)),
                dtype=self.dtype,
                kernel_init=_fc_init,
                name=name,
            )
            x = feats[name] = nn.relu(conv(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return x

    def _score(self, x, name: str, init):
        conv = self.conv(self.num_classes, (1, 1), dtype=self.dtype, kernel_init=init, name=name)
        return conv(x)

    def _upsample(self, x, factor: int, name: str):
        k = bilinear_kernel_size(factor)
        return nn.ConvTranspose(
            self.num_classes,
            (k, k),
            strides=(factor, factor),
            padding=bilinear_padding(factor),
            use_bias=False,
            kernel_init=bilinear_init(factor),
            dtype=self.dtype,
            name=name,
        )(x)

    def _align(self, up, like, what: str, image):
        """Crops upsampled scores to `like` (offset 0); ConfigError when they are smaller."""
        (h, w), (lh, lw) = up.shape[1:3], like.shape[1:3]
        if h < lh or w < lw:
            side = image.shape[1:3]
            raise ConfigError(
                f"FCN on '{self.backbone}': the upsampled scores are {h}x{w}, smaller than "
                f"{what} ({lh}x{lw}), for a {side[0]}x{side[1]} input; use an image size "
                f"divisible by 32 (e.g. {[32 * max(1, round(n / 32)) for n in side]})"
            )
        return crop_offset(up, like, 0)


def from_classifier(vgg_variables: dict, fcn_variables: dict) -> dict:
    """FCN variables whose backbone and fc6/fc7 are a trained VGG classifier's (the paper's
    "convolutionalization"); everything else (score and upsampling layers) is kept.

    vgg_variables: a registry VGG's variables with its classifier (`features_*` and
    `classifier_0` [C*7*7, F] with rows in PyTorch's C, H, W flatten order, `classifier_3`
    [F, F]); fcn_variables: an FCN's on the same VGG configuration with fc_width F. fc6
    becomes the 7x7 conv [7, 7, C, F], fc7 the 1x1 conv [1, 1, F, F]; BN statistics of a
    `vgg*_bn` backbone move with their layers. Returns new variables (inputs are not changed);
    ConfigError naming the layer when shapes do not match.
    """
    vp, params = vgg_variables["params"], dict(fcn_variables["params"])
    for layer in ("classifier_0", "classifier_3"):
        if layer not in vp:
            raise ConfigError(f"from_classifier: the VGG variables have no '{layer}'")
    if "fc6" not in params or "backbone" not in params:
        raise ConfigError("from_classifier needs an FCN with fc6/fc7 (fc_width > 0)")
    params["backbone"] = _copy_features(vp, params["backbone"], "params")
    kh, kw, c, f = params["fc6"]["kernel"].shape
    _same_size(vp["classifier_0"], (c * kh * kw, f), "classifier_0", params["fc6"])
    _same_size(vp["classifier_3"], (f, f), "classifier_3", params["fc7"])
    fc6 = jnp.asarray(vp["classifier_0"]["kernel"]).reshape(c, kh, kw, f).transpose(1, 2, 0, 3)
    fc7 = jnp.asarray(vp["classifier_3"]["kernel"]).reshape(1, 1, f, f)
    params["fc6"] = _layer(params["fc6"], fc6, vp["classifier_0"]["bias"])
    params["fc7"] = _layer(params["fc7"], fc7, vp["classifier_3"]["bias"])
    out = {**fcn_variables, "params": params}
    if "batch_stats" in vgg_variables:
        stats = dict(out["batch_stats"])
        stats["backbone"] = _copy_features(
            vgg_variables["batch_stats"], stats["backbone"], "batch_stats"
        )
        out["batch_stats"] = stats
    return out


def _same_size(dense: dict, shape: tuple, name: str, conv: dict):
    if tuple(dense["kernel"].shape) != shape or dense["bias"].shape != conv["bias"].shape:
        raise ConfigError(
            f"from_classifier: VGG '{name}' {tuple(dense['kernel'].shape)} does not fit the "
            f"FCN's conv {tuple(conv['kernel'].shape)} (build it with fc_width = the VGG's "
            "classifier_width)"
        )


def _layer(target: dict, kernel, bias) -> dict:
    return {"kernel": kernel.astype(target["kernel"].dtype), "bias": jnp.asarray(bias)}


def _copy_features(source: dict, backbone: dict, collection: str) -> dict:
    """backbone with every `features_*` entry of source, checked to have the same shapes."""
    ours = {k for k in backbone if k.startswith("features_")}
    theirs = {k for k in source if k.startswith("features_")}
    if ours != theirs:
        raise ConfigError(
            f"from_classifier: the VGG's {collection} layers {sorted(theirs)} differ from the "
            f"FCN backbone's {sorted(ours)} (build the FCN on the same VGG configuration)"
        )
    out = dict(backbone)
    for name in ours:
        for key, leaf in source[name].items():
            if tuple(leaf.shape) != tuple(backbone[name][key].shape):
                raise ConfigError(
                    f"from_classifier: {name}/{key} is {tuple(leaf.shape)} in the VGG, "
                    f"{tuple(backbone[name][key].shape)} in the FCN"
                )
        out[name] = dict(source[name])
    return out


MODELS = {
    "fcn32s": functools.partial(FCN, skips=()),
    "fcn16s": functools.partial(FCN, skips=(16,)),
    "fcn8s": functools.partial(FCN, skips=(16, 8)),
}
