"""FCN (Long et al. 2015) on the embedded digit scenes: VGG-16 with its fully connected
layers turned into convolutions, scored at stride 32 and upsampled by transposed
convolutions initialised to bilinear interpolation; 16s / 8s fuse scores from pool4 / pool3.

    ./launch.sh train --config=configs/fcn.py:8s --workdir=runs/fcn8s

Arguments: `32s` / `16s` / `8s` (the skip architecture; default 8s), `smoke`. fc6 / fc7 are
512 wide here (the paper's 4096 at an eighth, for a 2-core CPU: at 64 px pool5 is 2x2).

Measured (2026-12-01, 2-core CPU, experiments/fcn_skips, seed 0): `:8s` test **mIoU 0.684**
(pixel accuracy 0.970) in 15m42s; `:32s` mIoU 0.081 (background only: from scratch it did
not start learning in 600 steps).
"""

from cnnjax.config import base as configlib

VARIANTS = ("32s", "16s", "8s")


def get_config(arg=None):
    tokens = configlib.parse_arg(arg, {*VARIANTS, "smoke"})
    chosen = [v for v in VARIANTS if v in tokens]
    if len(chosen) > 1:
        raise configlib.ConfigError(f"choose one FCN variant of {list(VARIANTS)}, got {chosen}")
    c = configlib.base_config()
    configlib.segmentation_on_scenes(c)
    c.model.name = f"fcn{chosen[0] if chosen else '8s'}"
    c.model.kwargs.backbone = "vgg16"
    c.model.kwargs.fc_width = 512
    c.optim.learning_rate = 5e-4
    c.train.num_steps = 600
    c.train.checkpoint_every_steps = 200
    c.eval.every_steps = 300
    if "smoke" in tokens:
        configlib.apply_smoke(c)
    return c.lock()
