"""Plain vs residual CIFAR-style nets at depth 20 / 32 / 44 / 56: the degradation problem
(He et al. 2015, Fig. 1 and Fig. 6).

    ./launch.sh sweep experiments/plain_vs_residual/sweep.py --parallel=2
    ./launch.sh report experiments/plain_vs_residual/sweep.py --readme

Every point is configs/resnet20_cifar.py on the embedded digits (`:digits`, and `:plain` for
the shortcut-free twins) with the paper's optimiser (SGD momentum 0.9, learning rate 0.1
divided by 10 at 50% and 75% of the steps, weight decay 1e-4, batch 128, option-A
shortcuts), shortened to fit a 2-core CPU: 16 px inputs (the 8x8 digits upsampled) and
STEPS steps. Runs go to runs/sweeps/plain_vs_residual/<name>.

CIFAR-10 instead (prepared as ArrayRecord in DIR): add the overrides
`data.name='cifar10'`, `data.image_size=32`, `data.aug.flip=True`,
`data.aug.crop_padding=4`, `data.data_dir=DIR` and the paper's 64,000 steps.
"""

from cnnjax.tools.sweep import Point, short_run

DEPTHS = (20, 32, 44, 56)
STEPS = 1200
SEEDS = (0,)


def get_sweep() -> list[Point]:
    points = []
    # Deepest first: the two long runs start together and a sweep cut short still compares
    # the depths where the effect is largest.
    for depth in sorted(DEPTHS, reverse=True):
        for kind in ("plain", "resnet"):
            for seed in SEEDS:
                points.append(
                    Point(
                        name=f"{kind}{depth}_s{seed}",
                        config="configs/resnet20_cifar.py:digits"
                        + (",plain" if kind == "plain" else ""),
                        overrides={
                            "model.name": f"{kind}{depth}_cifar",
                            **short_run(STEPS),
                        },
                        seed=seed,
                    )
                )
    return points
