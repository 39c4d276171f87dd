"""Bottleneck blocks (1x1 reduce -> 3x3 -> 1x1 expand, He et al. 2015 section 4.1 / 2016)
against the basic block of two 3x3 convolutions, at matched depth and at matched cost.

    ./launch.sh sweep experiments/bottleneck/sweep.py --parallel=2
    ./launch.sh report experiments/bottleneck/sweep.py --readme
    .venv/bin/python experiments/kernel_3x3_vs_5x5/arithmetic.py experiments/bottleneck/sweep.py

CIFAR ResNets (configs/resnet20_cifar.py:digits, option-A shortcuts) on the embedded digits at
16 px with the ResNet paper's SGD recipe shortened to STEPS steps:
- matched depth: ResNet-56 with basic blocks (9 per stage) against ResNet-56 with bottleneck
  blocks (6 per stage, width 16: 16/32/64 inner and 64/128/256 output channels);
- matched cost: ResNet-20 with basic blocks (0.27M parameters, 10.1M MACs at 16 px) against
  bottleneck nets of about its parameters and MACs that are much deeper: ResNet-56 at width
  11 and ResNet-110 at width 8 (the arithmetic script prints the exact counts);
each once as the recipe has it (learning rate 0.1 from the first step) and once with WARMUP
steps of linear warm-up (`_warm`: the ResNet paper warms its 110-layer net up at 0.01, since
0.1 is "slightly too large to start converging").
Runs go to runs/sweeps/bottleneck/<name>.
"""

from cnnjax.tools.sweep import Point, short_run

STEPS = 800
# name -> (registry entry, model.kwargs); the deepest first.
VARIANTS = {
    "bneck110_w8": ("resnet110_cifar", {"bottleneck": True, "width": 8}),
    "basic56": ("resnet56_cifar", {}),
    "bneck56_w16": ("resnet56_cifar", {"bottleneck": True}),
    "bneck56_w11": ("resnet56_cifar", {"bottleneck": True, "width": 11}),
    "basic20": ("resnet20_cifar", {}),
}


WARMUP = 40  # steps of linear warm-up in the `_warm` points (5% of the run)


def get_sweep() -> list[Point]:
    return [
        Point(
            name=f"{name}{suffix}_s0",
            config="configs/resnet20_cifar.py:digits",
            overrides={
                "model.name": entry,
                **{f"model.kwargs.{k}": v for k, v in kwargs.items()},
                **short_run(STEPS),
                **({"optim.warmup_steps": WARMUP} if suffix else {}),
            },
            seed=0,
        )
        for suffix in ("", "_warm")
        for name, (entry, kwargs) in VARIANTS.items()
    ]
