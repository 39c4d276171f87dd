"""Cropping and padding that bring two feature maps to one size before a skip connection fuses
them (FCN's Caffe `Crop` layer, U-Net's centre crop, pad-to-match for odd sizes).

Every function takes channels-last maps x [..., H, W, C] (any leading batch dims) and keeps
their dtype. `like` is any array (or `jax.ShapeDtypeStruct`) whose axes -3 and -2 give the
target size; only its shape is read. Sizes are static, so all of this runs under `jit`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _hw(a, what: str) -> tuple[int, int]:
    if len(a.shape) < 3:
        raise ValueError(f"{what} must have shape [..., H, W, C], got {tuple(a.shape)}")
    return int(a.shape[-3]), int(a.shape[-2])


def _offsets(offset, what: str) -> tuple[int, int]:
    pair = (offset, offset) if isinstance(offset, int) else tuple(offset)
    if len(pair) != 2 or not all(isinstance(o, int) and o >= 0 for o in pair):
        raise ValueError(f"{what} must be a non-negative int or a pair of them, got {offset!r}")
    return pair


def crop(x, top: int, left: int, height: int, width: int):
    """x[..., top:top + height, left:left + width, :], checked to lie inside x.

    x: [..., H, W, C] -> [..., height, width, C]. ValueError if the window leaves x.
    """
    h, w = _hw(x, "crop: x")
    if min(top, left) < 0 or min(height, width) < 1 or top + height > h or left + width > w:
        raise ValueError(
            f"cannot crop a {height}x{width} window at offset ({top}, {left}) from a {h}x{w} map"
        )
    x = jax.lax.slice_in_dim(x, top, top + height, axis=x.ndim - 3)
    return jax.lax.slice_in_dim(x, left, left + width, axis=x.ndim - 2)


def center_crop(x, height: int, width: int):
    """The central height x width window of x (U-Net's crop of the encoder maps).

    x: [..., H, W, C] -> [..., height, width, C], starting at ((H - height) // 2,
    (W - width) // 2): when the margin is odd the extra row / column is cut from the bottom /
    right (torchvision's `center_crop` rounds half to even instead). ValueError if
    height > H or width > W.
    """
    h, w = _hw(x, "center_crop: x")
    return crop(x, (h - height) // 2, (w - width) // 2, height, width)


def crop_to(x, like):
    """`center_crop` of x to like's spatial size: [..., H, W, C] -> [..., H_like, W_like, C]."""
    return center_crop(x, *_hw(like, "crop_to: like"))


def crop_offset(x, like, offset: int | Sequence[int] = 0):
    """FCN's Caffe `Crop` layer (axis=2): x[..., oh:oh + H_like, ow:ow + W_like, :].

    x: [..., H, W, C]; like: the reference map [..., H_like, W_like, C']; offset: int or
    (oh, ow) >= 0, the top-left corner of the kept window in x. The Caffe FCNs (conv1 pad 100,
    unpadded fc6) crop the upsampled scores at offsets 5 (to pool4), 9 (to pool3) and, to the
    image, 19 (FCN-32s), 27 (16s) or 31 (8s); a 'same'-padded FCN needs 0 everywhere.
    ValueError if the window leaves x.
    -> [..., H_like, W_like, C].
    """
    oh, ow = _offsets(offset, "crop_offset offset")
    return crop(x, oh, ow, *_hw(like, "crop_offset: like"))


def pad_to(x, like, value=0):
    """Pads x with `value` to like's spatial size, centred (the extra row / column of an odd
    margin goes to the bottom / right), as U-Net implementations do with odd-sized maps.

    x: [..., H, W, C]; like: [..., H_like, W_like, C'] with H_like >= H, W_like >= W
    (ValueError otherwise). -> [..., H_like, W_like, C] in x.dtype.
    """
    (h, w), (th, tw) = _hw(x, "pad_to: x"), _hw(like, "pad_to: like")
    if th < h or tw < w:
        raise ValueError(f"pad_to cannot shrink a {h}x{w} map to {th}x{tw}; crop it instead")
    dh, dw = th - h, tw - w
    pads = [(0, 0)] * (x.ndim - 3) + [(dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)]
    return jnp.pad(x, pads, constant_values=value)
