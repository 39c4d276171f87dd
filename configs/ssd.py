"""SSD (Liu et al. 2016) on the embedded digit scenes: class scores and box offsets from a
3x3 convolution per default box on five maps of a ResNet-18, hard negative mining 3:1.

    ./launch.sh train --config=configs/ssd.py --workdir=runs/ssd

At 64 px the maps are ResNet-18's stride 4, 8, 16 and 32 (16x16, 8x8, 4x4, 2x2) and one
extra 1x1 -> 3x3/2 block (1x1), with scales 0.2 ... 0.9 and aspect ratios {1, 2, 1/2, 3,
1/3} (2,046 default boxes). The digits are 12-28 px (0.19-0.44 of the image): without the
stride-4 map, starting at stride 8 as SSD300's conv4_3 does, only 76% of them (of 1,386 in
600 training scenes) have a default box at IoU >= 0.5; with it, 99%.

Arguments: `voc` (PASCAL VOC 2007 trainval -> test at 300 px, tfds `voc/2007` prepared as
ArrayRecord: SSD300's six maps 38 ... 1 on a ResNet-50 read at strides 8, 16, 32 plus three
extra blocks, flips, difficult objects ignored; not run here; start it from ImageNet weights
with --config.init.checkpoint=<resnet50 state dict> --config.init.model=resnet50
--config.init.prefix=backbone), `smoke` (seconds, for tests: a LeNet-5 backbone stands in
for the ResNet).

Measured (2026-12-01, 2-core CPU, shared machine, load average 6-9; `timeout 1500 nice -n 5
python -m cnnjax.train --config=configs/ssd.py --workdir=/tmp/ssd_run`): test **map50 0.973**
(VOC07 11-point 0.940; per-class AP 0.93-1.00, 8 and 9 the weakest), COCO AP 0.699 (AP50
0.971, AP75 0.895), precision / recall at score 0.5: 0.911 / 0.915, after 800 steps in
15m31s (16m29s with start-up); 0.946 / 0.621 at step 400.
"""

from cnnjax.config import base as configlib


def voc(c) -> None:
    """PASCAL VOC 2007 trainval -> test at SSD300's size and maps."""
    configlib.detection_on_voc(c, image_size=300)
    c.task.kwargs.aspect_ratios = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))
    c.data.batch_size = 32
    c.model.kwargs.backbone = "resnet50"
    c.model.kwargs.feature_strides = (8, 16, 32)
    c.model.kwargs.extras = ((256, 2, 1), (256, 1, 0), (256, 1, 0))
    c.train.num_steps = 20000
    c.train.checkpoint_every_steps = 2000
    c.eval.every_steps = 5000


def get_config(arg=None):
    tokens = configlib.parse_arg(arg, {"voc", "smoke"})
    c = configlib.base_config()
    configlib.detection_on_scenes(c, "ssd")
    c.model.name = "ssd"
    c.model.kwargs.backbone = "resnet18"
    c.model.kwargs.feature_strides = (4, 8, 16, 32)
    c.model.kwargs.extras = ((128, 2, 1),)
    c.train.num_steps = 800
    c.train.checkpoint_every_steps = 400
    c.eval.every_steps = 400
    if "voc" in tokens:
        voc(c)
    if "smoke" in tokens:
        configlib.apply_smoke(c)
        # ResNet-18 alone takes ~40 s to compile on a loaded 2-core CPU: LeNet-5's maps at
        # stride 2 and 4 (26x26, 13x13 at 64 px) stand in, the SSD parts are all there.
        c.model.kwargs.backbone = "lenet5"
        c.model.kwargs.feature_strides = (2, 4)
        c.model.kwargs.extras = ((32, 2, 1),)
        c.data.batch_size = 8
        c.data.max_eval_examples = 32
        c.train.conv = "xla"  # compiles faster than im2col
    return c.lock()
