"""Batch normalisation on vs off in plain CIFAR-style nets at two depths and two learning
rates (Ioffe & Szegedy 2015: BatchNorm lets a net train with higher learning rates and less
care about initialisation).

    ./launch.sh sweep experiments/batchnorm/sweep.py --parallel=2
    ./launch.sh report experiments/batchnorm/sweep.py --readme

Every point is configs/resnet20_cifar.py:digits,plain (plain20_cifar / plain44_cifar: no
shortcuts, flax's default LeCun-normal initialisation) with `model.kwargs.batch_norm` on or
off (off: every BatchNorm removed, the convolutions get biases), at the ResNet paper's
learning rate 0.1;
without BatchNorm also at 0.01. On the embedded digits at 16 px, the paper's SGD recipe
shortened to STEPS steps.
Runs go to runs/sweeps/batchnorm/<name>.
"""

from cnnjax.tools.sweep import Point, short_run

DEPTHS = (44, 20)  # the long runs first
LEARNING_RATES = (0.1, 0.01)
STEPS = 800


def get_sweep() -> list[Point]:
    points = []
    for depth in DEPTHS:
        for bn in (True, False):
            for lr in LEARNING_RATES if not bn else LEARNING_RATES[:1]:
                points.append(
                    Point(
                        name=f"plain{depth}_{'bn' if bn else 'nobn'}_lr{lr:g}",
                        config="configs/resnet20_cifar.py:digits,plain",
                        overrides={
                            "model.name": f"plain{depth}_cifar",
                            "model.kwargs.batch_norm": bn,
                            "optim.learning_rate": lr,
                            **short_run(STEPS),
                        },
                        seed=0,
                    )
                )
    return points
