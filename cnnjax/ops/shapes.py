"""Convolution arithmetic on plain integers: output sizes, receptive fields, parameters and MACs.

The course's formulas, one axis at a time, so they can be checked by hand and reused by
`cnnjax.analysis.arithmetic` (which applies them to every layer of a traced model).
"""

import math
import numbers
from collections.abc import Sequence

Padding = int | tuple[int, int] | str


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Extent of a dilated kernel: K_eff = d * (K - 1) + 1 (a 3-tap kernel with d=2 spans 5)."""
    _check_positive(kernel=kernel, dilation=dilation)
    return dilation * (kernel - 1) + 1


def conv_output_size(
    size: int, kernel: int, stride: int = 1, padding: Padding = 0, dilation: int = 1
) -> int:
    """Output length along one axis of a convolution or pooling window.

    W_out = floor((W - K_eff + P_lo + P_hi) / S) + 1, i.e. floor((W - K_eff + 2P) / S) + 1 for
    symmetric padding P. `padding` is an int P, a pair (P_lo, P_hi), 'VALID' (P = 0) or 'SAME'
    (W_out = ceil(W / S), XLA's rule). Raises ValueError when the window does not fit.
    """
    _check_positive(size=size, kernel=kernel, stride=stride, dilation=dilation)
    k = effective_kernel(kernel, dilation)
    if isinstance(padding, str):
        if padding.upper() == "SAME":
            return -(-size // stride)
        if padding.upper() != "VALID":
            raise ValueError(f"padding must be an int, a pair, 'SAME' or 'VALID', got {padding!r}")
        lo = hi = 0
    else:
        lo, hi = (padding, padding) if isinstance(padding, int) else tuple(padding)
    if min(lo, hi) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    if size + lo + hi < k:
        raise ValueError(
            f"window of extent {k} (kernel {kernel}, dilation {dilation}) does not fit an input "
            f"of {size} with padding {padding!r}"
        )
    return (size + lo + hi - k) // stride + 1


def receptive_field_step(
    rf: float,
    jump: float,
    kernel: int,
    stride: int = 1,
    dilation: int = 1,
    input_dilation: int = 1,
) -> tuple[float, float]:
    """One layer of the receptive-field recurrence, in input pixels.

    r_out = r_in + (K_eff - 1) * j_in and j_out = j_in * S, where `jump` j is the distance in
    input pixels between neighbouring output positions. Start from (r, j) = (1, 1) at the image.
    `input_dilation` T > 1 is a transposed convolution of stride T (T - 1 zeros between
    inputs): a window then covers at most floor((K_eff - 1) / T) + 1 real inputs, so
    r_out = r_in + floor((K_eff - 1) / T) * j_in and j_out = j_in * S / T.
    """
    _check_positive(stride=stride, input_dilation=input_dilation)
    span = (effective_kernel(kernel, dilation) - 1) // input_dilation
    return rf + span * jump, jump * stride / input_dilation


def receptive_field(layers: Sequence[tuple[int, int, int]]) -> list[tuple[float, float]]:
    """(r, j) after each layer of a chain of (kernel, stride, dilation) triples, from (1, 1)."""
    out, r, j = [], 1, 1
    for kernel, stride, dilation in layers:
        r, j = receptive_field_step(r, j, kernel, stride, dilation)
        out.append((r, j))
    return out


def conv_macs(
    output_size: Sequence[int],
    out_channels: int,
    kernel_size: Sequence[int],
    in_channels: int,
    groups: int = 1,
) -> int:
    """Multiply-accumulates of one convolution on one image.

    H_out * W_out * C_out * (K_h * K_w * C_in / groups), for any number of spatial axes
    (`output_size` and `kernel_size` list them in the same order). Bias adds are not counted.
    """
    _check_groups(in_channels, out_channels, groups)
    return math.prod(output_size) * out_channels * math.prod(kernel_size) * in_channels // groups


def conv_params(
    kernel_size: Sequence[int], in_channels: int, out_channels: int, groups: int = 1, bias=False
) -> int:
    """Weights of a convolution: K_h * K_w * (C_in / groups) * C_out, plus C_out with a bias."""
    _check_groups(in_channels, out_channels, groups)
    weights = math.prod(kernel_size) * in_channels // groups * out_channels
    return weights + (out_channels if bias else 0)


def dense_macs(in_features: int, out_features: int) -> int:
    """Multiply-accumulates of a fully connected layer on one example: in * out."""
    _check_positive(in_features=in_features, out_features=out_features)
    return in_features * out_features


def _check_positive(**values):
    for name, v in values.items():
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def _check_groups(in_channels: int, out_channels: int, groups: int):
    _check_positive(in_channels=in_channels, out_channels=out_channels, groups=groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
        )
