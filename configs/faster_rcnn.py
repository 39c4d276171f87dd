"""The two-stage detectors on the embedded digit scenes, one config per member of the family:
Faster R-CNN (Ren et al. 2015) by default, and R-CNN, SPPNet and Fast R-CNN by argument.

    ./launch.sh train --config=configs/faster_rcnn.py --workdir=runs/faster_rcnn

Default: Faster R-CNN with torchvision's RoIAlign (4x4 bins, sampling ratio 2) on a ResNet-18
read at stride 8 (an 8x8 map at 64 px; at stride 16 a 12 px digit is under one cell), an RPN
with 9 anchors per cell (sizes 12, 18, 26 px x height / width 1, 1.5, 2: the digits are
12-28 px tall, 1.1-3 times taller than wide), 300 / 150 boxes before NMS (0.7) and 64 / 32
after (train / test), 256 anchors and 32 regions sampled per image, a two-layer 256-unit box
head, approximate joint training in one step, 1,000 steps of batch 16 (5.3 epochs). The
paper's RoI max pooling is the `roi_pool` argument: its corners snap to the 8 px cells.

Arguments: `roi_pool` (Faster R-CNN as published: RPN + RoI pooling), `fast` (Fast R-CNN:
selective search + RoI pooling), `spp` (SPPNet: selective search + a {1, 2, 4} pyramid of
the shared map), `rcnn` (R-CNN: selective search + every region cut from the image, warped
to 24 px and run through the backbone alone; slow by design), `voc` (PASCAL VOC 2007 at
448 px, tfds `voc/2007` prepared as ArrayRecord, anchors 64-256 at stride 16 (the paper's
128-512 at 600 px, scaled), flips, difficult objects ignored; start it from ImageNet weights with
--config.init.checkpoint=resnet18.safetensors --config.init.model=resnet18
--config.init.prefix=body/backbone), `smoke`. Selective search runs in the input pipeline
(OpenCV 'fast' mode on the scene upsampled to 128 px: about 20 boxes per scene, 64 kept).

Measured (2026-12-01, 2-core CPU, shared machine, load average 4-7):

    nice -n 5 timeout 1500 .venv/bin/python -m cnnjax.train --config=configs/faster_rcnn.py \\
        --workdir=/tmp/frcnn_run

default (RPN + RoIAlign): test **mAP@0.5 0.956** (VOC07 11-point 0.926), COCO AP 0.795,
AP75 0.944, AR100 0.861, per-class AP50 0.83 (digit 9) - 0.99; 1,000 steps at 1.35 steps/s,
13m06s wall for the whole run (compilation and the final evaluation included).
`roi_pool` (the paper's RoI max pooling, same command with :roi_pool): mAP@0.5 0.884, COCO
AP 0.539, AP75 0.600 (loss_box 0.42 against RoIAlign's 0.12 at the end: the snapped bins cost
localisation), 1.95 steps/s (the sparse-table max pool is cheaper than bilinear sampling),
9m29s wall. `fast`, `spp` and `rcnn` are not measured yet; selective search costs about
50 ms a scene on an idle core, in the input pipeline's threads.
"""

from cnnjax.config import base as configlib
from cnnjax.errors import ConfigError

MEMBERS = {  # argument -> (proposals, region_features)
    "roi_pool": ("rpn", "roi_pool"),
    "fast": ("selective_search", "roi_pool"),
    "spp": ("selective_search", "spp"),
    "rcnn": ("selective_search", "warp"),
}


def member(tokens: set) -> tuple[str, str]:
    chosen = sorted(tokens & set(MEMBERS))
    if len(chosen) > 1:
        raise ConfigError(f"choose one family member of {sorted(MEMBERS)}, got {chosen}")
    return MEMBERS[chosen[0]] if chosen else ("rpn", "roi_align")


def voc(c) -> None:
    """PASCAL VOC 2007 trainval -> test at 448 px with the paper's anchors at stride 16."""
    configlib.detection_on_voc(c, image_size=448)
    c.task.kwargs.num_proposals = 500
    c.task.kwargs.search_min_side = 0
    c.task.kwargs.roi_batch_per_image = 256
    c.model.kwargs.feature_stride = 16
    c.model.kwargs.anchor_scales = (64.0, 128.0, 256.0)
    c.model.kwargs.anchor_ratios = (0.5, 1.0, 2.0)
    c.model.kwargs.rpn_pre_nms_top_k = (2000, 1000)
    c.model.kwargs.rpn_post_nms_top_k = (500, 300)
    c.model.kwargs.pool_size = 7
    c.model.kwargs.warp_size = 64
    c.model.kwargs.head_hidden = 1024
    c.data.batch_size = 8
    c.train.num_steps = 20000
    c.train.checkpoint_every_steps = 2000
    c.eval.every_steps = 5000


def get_config(arg=None):
    tokens = configlib.parse_arg(arg, {*MEMBERS, "voc", "smoke"})
    proposals, region_features = member(tokens)
    c = configlib.base_config()
    configlib.detection_on_scenes(
        c, "two_stage", proposals=proposals, region_features=region_features,
        num_proposals=64, rpn_batch_per_image=256, roi_batch_per_image=32,
    )  # fmt: skip
    c.model.name = "two_stage"
    c.model.kwargs.backbone = "resnet18"
    c.model.kwargs.feature_stride = 8
    c.model.kwargs.anchor_scales = (12.0, 18.0, 26.0)
    c.model.kwargs.anchor_ratios = (1.0, 1.5, 2.0)
    c.model.kwargs.rpn_pre_nms_top_k = (300, 150)
    c.model.kwargs.rpn_post_nms_top_k = (64, 32)
    c.model.kwargs.pool_size = 4
    c.model.kwargs.spp_levels = (1, 2, 4)
    c.model.kwargs.warp_size = 24
    c.model.kwargs.head_hidden = 256
    c.train.num_steps = 1000
    c.train.checkpoint_every_steps = 500
    c.eval.every_steps = 1000
    if "voc" in tokens:
        voc(c)
    if "smoke" in tokens:
        configlib.apply_smoke(c)
        c.model.kwargs.rpn_pre_nms_top_k = (100, 50)
        c.model.kwargs.rpn_post_nms_top_k = (16, 16)
        c.task.kwargs.roi_batch_per_image = 16
    return c.lock()
