"""DeconvNet (Noh et al. 2015) on the embedded digit scenes: a VGG-16 encoder that remembers
where each max-pool took its maximum, and a mirrored decoder of unpooling (to those switch
positions) and deconvolution layers.

    ./launch.sh train --config=configs/deconvnet.py --workdir=runs/deconvnet

Width 0.25 (a quarter of the paper's channels, for a 2-core CPU; `full` for the paper's
252M-parameter network), 'same'-padded 7x7 bottleneck. Arguments: `full`, `smoke`.
"""

from cnnjax.config import base as configlib


def get_config(arg=None):
    tokens = configlib.parse_arg(arg, {"full", "smoke"})
    c = configlib.base_config()
    configlib.segmentation_on_scenes(c)
    c.model.name = "deconvnet"
    c.model.kwargs.width = 1.0 if "full" in tokens else 0.25
    c.optim.learning_rate = 1e-3
    c.train.num_steps = 2000
    c.train.checkpoint_every_steps = 500
    c.eval.every_steps = 1000
    if "smoke" in tokens:
        configlib.apply_smoke(c)
    return c.lock()
