"""The transfer experiment's first stage: ResNet-20 trained on the digits 0-4 only.

    ./launch.sh sweep experiments/transfer/pretrain.py      # -> runs/sweeps/transfer_pretrain

configs/resnet20_cifar.py:digits at 16 px with `data.classes=(0, 1, 2, 3, 4)` (the 722
training images of those classes), 2-pixel random shifts, the ResNet paper's SGD recipe
shortened to STEPS steps. experiments/transfer/sweep.py starts from its last checkpoint.
"""

from cnnjax.tools.sweep import Point, short_run

STEPS = 800
SOURCE_CLASSES = (0, 1, 2, 3, 4)
NAME = "digits0to4_s0"


def get_sweep() -> list[Point]:
    return [
        Point(
            name=NAME,
            config="configs/resnet20_cifar.py:digits",
            overrides={"data.classes": SOURCE_CLASSES, **short_run(STEPS, log_every=50)},
            seed=0,
        )
    ]
