"""ResNet-20 for CIFAR-10 with the ResNet paper's recipe (He et al. 2015, section 4.2).

Option-A (zero-padded identity) shortcuts, 4-pixel padding + random 32x32 crop +
horizontal flip, SGD momentum 0.9, weight decay 1e-4, batch 128, learning rate 0.1
divided by 10 at 32k and 48k iterations, 64k iterations in all. The paper reports
8.75% test error (91.25% accuracy) on CIFAR-10.

    ./launch.sh train --config=configs/resnet20_cifar.py --workdir=runs/resnet20_cifar \
        --config.data.data_dir=DIR   # DIR holds cifar10 prepared as ArrayRecord

    ./launch.sh train --config=configs/resnet20_cifar.py:digits --workdir=runs/r20_digits

Arguments: `digits` (the embedded handwritten digits instead of CIFAR-10, no flips,
3,000 steps), `plain` (the plain twin, plain20_cifar: the same layers without shortcuts;
`--config.model.name=plain56_cifar` then picks its depth), `smoke` (seconds, for tests).
"""

from cnnjax.config import base as configlib


def get_config(arg=None):
    tokens = configlib.parse_arg(arg, {"digits", "plain", "smoke"})
    c = configlib.base_config()
    c.model.name = "resnet20_cifar"
    if "plain" in tokens:
        c.model.name = "plain20_cifar"  # no shortcut option: the plain entries fix it to None
    else:
        c.model.kwargs.shortcut = "A"
    c.data.name = "cifar10"
    c.data.image_size = 32
    c.data.batch_size = 128
    c.data.aug.crop_padding = 4
    c.data.aug.flip = True
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "piecewise"
    c.optim.boundaries = (0.5, 0.75)  # 32k and 48k of 64k iterations
    c.optim.decay_factor = 0.1
    c.train.num_steps = 64_000
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 2_000
    c.eval.every_steps = 2_000
    if "digits" in tokens:
        c.data.name = "digits"
        c.data.aug.flip = False  # a mirrored digit is another symbol
        c.data.aug.crop_padding = 2
        c.train.num_steps = 3_000
        c.train.checkpoint_every_steps = 500
        c.eval.every_steps = 500
    if "smoke" in tokens:
        configlib.apply_smoke(c)
    return c.lock()
