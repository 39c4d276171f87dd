"""YOLO v1 (Redmon et al. 2016) on the embedded digit scenes: one pass predicts an 8 x 8 grid,
two boxes per cell with a confidence and ten class probabilities, trained with the paper's
sum-squared loss (lambda_coord 5, lambda_noobj 0.5, square roots of width and height).

    ./launch.sh train --config=configs/yolo_v1.py --workdir=runs/yolo_v1

ResNet-18 backbone read at stride 16 (a 4 x 4 map at 64 px), the paper's head at a quarter
width (four 3x3 convolutions of 256, the second with stride 2, then 512 hidden units instead
of 4096, dropout 0.5). Arguments: `paper` (the paper's head widths 1024 / 4096 and S = 7),
`voc` (PASCAL VOC 2007 through tfds at 448 px, S = 7, flips; prepare it with
`tfds build voc/2007 --file_format=array_record`), `smoke`.
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
