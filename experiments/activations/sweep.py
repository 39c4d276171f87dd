"""Sigmoid vs tanh vs ReLU vs leaky ReLU in a deep plain net, with per-layer gradient norms.

    ./launch.sh sweep experiments/activations/sweep.py --parallel=2
    ./launch.sh report experiments/activations/sweep.py --readme
    .venv/bin/python experiments/activations/layer_figure.py

Every point is plain32_cifar (configs/resnet20_cifar.py:digits,plain; 31 convolutions with
BatchNorm and no shortcuts) with `model.kwargs.act` set, on the embedded digits at 16 px,
the ResNet paper's SGD recipe shortened to STEPS steps; every DIAG steps the trainer logs
each layer's gradient norm (train.diagnostics_every_steps). Runs go to
runs/sweeps/activations/<name>.
"""

from cnnjax.tools.sweep import Point, short_run

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu")
STEPS = 800
DIAG = 100


def get_sweep() -> list[Point]:
    return [
        Point(
            name=f"{act}_s0",
            config="configs/resnet20_cifar.py:digits,plain",
            overrides={
                "model.name": "plain32_cifar",
                "model.kwargs.act": act,
                **short_run(STEPS),
                "train.diagnostics_every_steps": DIAG,
            },
            seed=0,
        )
        for act in ACTIVATIONS
    ]
