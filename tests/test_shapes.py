"""cnnjax.ops.shapes: the course's convolution arithmetic, against hand-computed values."""

import pytest

from cnnjax.ops import shapes


@pytest.mark.parametrize(
    "args,kwargs,expected",
    [
        ((224, 7, 2, 3), {}, 112),  # ResNet stem: floor((224 - 7 + 6) / 2) + 1
        ((112, 3, 2, 1), {}, 56),  # ResNet max-pool
        ((227, 11, 4, 0), {}, 55),  # AlexNet conv1 as in the paper
        ((32, 5), {}, 28),  # LeNet-5 C1
        ((6, 3, 2, 0), {}, 2),  # floor((6 - 3) / 2) + 1: the last column is never reached
        ((112, 3, 2, (0, 1)), {}, 56),  # asymmetric (lo, hi) padding: floor(110 / 2) + 1
        ((32, 3, 1, 2), {"dilation": 2}, 32),  # K_eff = 5, P = 2 keeps the size
        ((32, 3, 1, 0), {"dilation": 4}, 24),  # K_eff = 9: 32 - 9 + 1
        ((224, 7, 2, "SAME"), {}, 112),  # ceil(224 / 2)
        ((7, 3, 1, "SAME"), {}, 7),
        ((15, 3, 2, "same"), {}, 8),  # ceil(15 / 2)
        ((10, 3, 1, "VALID"), {}, 8),
    ],
)
def test_conv_output_size(args, kwargs, expected):
    assert shapes.conv_output_size(*args, **kwargs) == expected


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((4, 5), {}, "does not fit"),
        ((4, 3, 1, 0), {"dilation": 2}, "does not fit"),  # K_eff 5 > 4
        ((8, 3, 0), {}, "stride must be a positive int"),
        ((8, 3, 1, "FULL"), {}, "'SAME' or 'VALID'"),
        ((8, 3, 1, -1), {}, "padding must be >= 0"),
        ((8, 0), {}, "kernel must be a positive int"),
    ],
)
def test_conv_output_size_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shapes.conv_output_size(*args, **kwargs)


def test_effective_kernel():
    assert shapes.effective_kernel(3) == 3
    assert shapes.effective_kernel(3, 2) == 5
    assert shapes.effective_kernel(7, 4) == 25
    assert shapes.effective_kernel(1, 8) == 1


def test_receptive_field_of_stacked_3x3_equals_one_5x5_and_7x7():
    assert shapes.receptive_field([(3, 1, 1), (3, 1, 1)]) == [(3, 1), (5, 1)]
    assert shapes.receptive_field([(3, 1, 1)] * 3)[-1] == (7, 1)
    assert shapes.receptive_field([(5, 1, 1)]) == [(5, 1)]


def test_receptive_field_with_strides_and_dilation():
    # ResNet stem: 7x7/2 conv, 3x3/2 max-pool, then a 3x3 conv at jump 4.
    assert shapes.receptive_field([(7, 2, 1), (3, 2, 1), (3, 1, 1)]) == [(7, 2), (11, 4), (19, 4)]
    # VGG: conv3, conv3, pool 2/2, conv3 -> 3, 5, 6 (jump 2), 10.
    vgg = shapes.receptive_field([(3, 1, 1), (3, 1, 1), (2, 2, 1), (3, 1, 1)])
    assert vgg == [(3, 1), (5, 1), (6, 2), (10, 2)]
    # Yu & Koltun's dilated stack: dilations 1, 2, 4 grow the field to 3, 7, 15.
    assert shapes.receptive_field([(3, 1, 1), (3, 1, 2), (3, 1, 4)]) == [(3, 1), (7, 1), (15, 1)]
    assert shapes.receptive_field_step(11, 4, 3, 2, 2) == (27, 8)  # K_eff 5: 11 + 4 * 4


def test_conv_macs_and_params():
    # ResNet conv1: 112 * 112 * 64 * (7 * 7 * 3).
    assert shapes.conv_macs((112, 112), 64, (7, 7), 3) == 118_013_952
    # Depthwise 3x3 on 32 channels: 112 * 112 * 32 * 9.
    assert shapes.conv_macs((112, 112), 32, (3, 3), 32, groups=32) == 3_612_672
    # Grouped: ResNeXt-style 4 groups of 16 -> 16: 8 * 8 * 64 * 9 * 16.
    assert shapes.conv_macs((8, 8), 64, (3, 3), 64, groups=4) == 589_824
    assert shapes.conv_params((3, 3), 64, 64) == 9 * 64**2
    assert shapes.conv_params((5, 5), 64, 64) == 25 * 64**2
    assert shapes.conv_params((3, 3), 32, 32, groups=32, bias=True) == 9 * 32 + 32
    assert shapes.dense_macs(2048, 1000) == 2_048_000


def test_grouped_counts_reject_groups_that_do_not_divide():
    with pytest.raises(ValueError, match="groups=3 must divide in_channels=64"):
        shapes.conv_macs((8, 8), 64, (3, 3), 64, groups=3)
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        shapes.dense_macs(0, 10)
