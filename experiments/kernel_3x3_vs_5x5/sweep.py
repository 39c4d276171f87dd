"""Two 3x3 convolutions vs one 5x5, and three 3x3 vs one 7x7 (Simonyan & Zisserman 2014,
section 2.3): the same receptive field with fewer parameters and MACs, and more
non-linearities.

    ./launch.sh sweep experiments/kernel_3x3_vs_5x5/sweep.py --parallel=2
    ./launch.sh report experiments/kernel_3x3_vs_5x5/sweep.py --readme
    .venv/bin/python experiments/kernel_3x3_vs_5x5/arithmetic.py   # parameters and MACs

Every point is ResNet-20's layout (configs/resnet20_cifar.py:digits: three stages of three
blocks at 16/32/64 channels, option-A shortcuts) with each block's convolutions set by
`model.kwargs.kernels`: (3, 3) is the paper's basic block, (5,) one 5x5 with the same
receptive field, (3, 3, 3) three 3x3s and (7,) one 7x7 with theirs. On the embedded digits
at 16 px with the ResNet paper's SGD recipe shortened to STEPS steps, SEEDS seeds (the
differences are small). Runs go to runs/sweeps/kernel_3x3_vs_5x5/<name>.
"""

from cnnjax.tools.sweep import Point, short_run

KERNELS = {"3x3x2": (3, 3), "5x5": (5,), "3x3x3": (3, 3, 3), "7x7": (7,)}
STEPS = 800
SEEDS = (0, 1)


def get_sweep() -> list[Point]:
    return [
        Point(
            name=f"{name}_s{seed}",
            config="configs/resnet20_cifar.py:digits",
            overrides={
                "model.kwargs.kernels": kernels,
                **short_run(STEPS),
            },
            seed=seed,
        )
        for seed in SEEDS
        for name, kernels in KERNELS.items()
    ]
