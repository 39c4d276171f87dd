"""YOLO v1 (Redmon et al. 2016) on the embedded digit scenes: one pass predicts an 8 x 8 grid,
two boxes per cell with a confidence and ten class probabilities, trained with the paper's
sum-squared loss (lambda_coord 5, lambda_noobj 0.5, square roots of width and height).

    ./launch.sh train --config=configs/yolo_v1.py --workdir=runs/yolo_v1

A ResNet-18 cut after its second stage (stride 8: an 8 x 8 map at 64 px, one cell per grid
cell), the paper's four 3x3 head convolutions (128 wide, all at stride 1) and a 1x1
convolution predicting every cell (`head='conv'`); AdamW 2e-3, 3,000 steps at batch 16.
The paper's fully connected head (`:paper`: 1024 / 4096 wide, S = 7, stride-32 map) learns
every cell's mapping separately and, without ImageNet pretraining, generalised slowly here:
on the same scenes (AdamW 1e-3, a 512-unit head, ResNet-18 read at stride 16 or 8) its
training loss was still 5.3-5.6 at step 500, the mean prediction (class term 2.4-2.5), where
the convolutional head on the same recipe was at 3.0 (class term 1.9).
Arguments: `paper`, `voc` (PASCAL VOC 2007 through tfds at 448 px, S = 7, the fully connected
head, flips; prepare it with `tfds build voc/2007 --file_format=array_record`), `smoke`.

Measured (2026-12-01, 2-core CPU, another job running for part of the time; `python -m
cnnjax.train --config=configs/yolo_v1.py --workdir=/tmp/runs/y_v2`): test **map50 0.982**
(VOC07 11-point 0.937; per-class AP 0.965-0.999), COCO AP 0.610 (AP50 0.980, AP75 0.690),
precision / recall at score 0.5: 0.996 / 0.582 (YOLO's scores, confidence x class
probability, stay low); map50 0.802 at step 1,000 and 0.971 at 2,000; 3,000 steps in 13m37s.
"""

from cnnjax.config import base as configlib


def get_config(arg=None):
    tokens = configlib.parse_arg(arg, {"paper", "voc", "smoke"})
    c = configlib.base_config()
    configlib.detection_on_scenes(c, "yolo_v1", grid=8)
    c.model.name = "yolo_v1"
    c.model.kwargs.backbone = "resnet18"
    c.model.kwargs.backbone_kwargs = (("stage_sizes", (2, 2)),)  # read at stride 8: cut there
    c.model.kwargs.feature_stride = 8
    c.model.kwargs.head = "conv"
    c.model.kwargs.head_width = 128
    c.model.kwargs.hidden = 512  # the fully connected head's (:paper)
    c.optim.learning_rate = 2e-3
    if "paper" in tokens:
        c.model.kwargs.backbone_kwargs = ()
        c.model.kwargs.feature_stride = 32
        c.model.kwargs.head = "fc"
        c.model.kwargs.head_width = 1024
        c.model.kwargs.hidden = 4096
        c.task.kwargs.grid = 7
    if "voc" in tokens:
        configlib.detection_on_voc(c, image_size=448)
        c.model.kwargs.backbone_kwargs = ()
        c.model.kwargs.feature_stride = 32
        c.model.kwargs.head = "fc"
        c.task.kwargs.grid = 7
    c.train.num_steps = 3000
    c.train.checkpoint_every_steps = 500
    c.eval.every_steps = 1000
    if "smoke" in tokens:
        configlib.apply_smoke(c)
    return c.lock()
