"""The course's detector lineage on the embedded digit scenes: R-CNN -> SPPNet -> Fast R-CNN ->
Faster R-CNN (RoI pooling, then RoIAlign), and the one-stage YOLO v1 and SSD.

    ./launch.sh sweep experiments/rcnn_lineage/sweep.py --parallel=2
    ./launch.sh report experiments/rcnn_lineage/sweep.py --readme --metrics=coco_ap
    .venv/bin/python experiments/rcnn_lineage/speed.py --readme

Every point trains STEPS steps at batch 16 on 64 px scenes with its config's own recipe (the
same ResNet-18 backbone everywhere; the two-stage members differ only in where the regions
come from and how their features are read); runs go to runs/sweeps/rcnn_lineage/<name>.
"""

from cnnjax.tools.sweep import Point

STEPS = 400  # one budget for all: half of SSD's config (map50 0.946 at step 400), a 2-core sweep

MEMBERS = (  # (point name, config): the course's order
    ("rcnn", "configs/faster_rcnn.py:rcnn"),
    ("sppnet", "configs/faster_rcnn.py:spp"),
    ("fast_rcnn", "configs/faster_rcnn.py:fast"),
    ("faster_rcnn", "configs/faster_rcnn.py:roi_pool"),
    ("faster_rcnn_align", "configs/faster_rcnn.py"),
    ("yolo_v1", "configs/yolo_v1.py"),
    ("ssd", "configs/ssd.py"),
)


def get_sweep() -> list[Point]:
    steps = {"train.num_steps": STEPS, "eval.every_steps": STEPS // 2,
             "train.checkpoint_every_steps": STEPS // 2}  # fmt: skip
    return [Point(name=n, config=c, overrides=steps, seed=0) for n, c in MEMBERS]
