"""Example sweep: ResNet-20 on the digits at smoke size, 2 learning rates x 2 seeds (seconds).

    ./launch.sh sweep experiments/example_sweep/sweep.py --parallel=2
    ./launch.sh report experiments/example_sweep/sweep.py

Runs go to runs/sweeps/example_sweep/<name>; the groups lr0.1 and lr0.02 each average
seeds 0 and 1. The tests (tests/test_sweep.py) run it too.
"""

from cnnjax.tools.sweep import Point

CONFIG = "configs/resnet20_cifar.py:digits,smoke"
LEARNING_RATES = {"lr0.1": 0.1, "lr0.02": 0.02}
SEEDS = (0, 1)


def get_sweep() -> list[Point]:
    return [
        Point(
            name=f"{tag}_s{seed}", config=CONFIG, overrides={"optim.learning_rate": lr}, seed=seed
        )  # fmt: skip
        for tag, lr in LEARNING_RATES.items()
        for seed in SEEDS
    ]
