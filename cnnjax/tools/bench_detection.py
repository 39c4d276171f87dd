"""Faster R-CNN training and inference throughput: cnnjax against torchvision's `FasterRCNN`
built to the same design (ResNet-18 cut after layer2 at stride 8, 9 anchors of 12 / 18 / 26 px
x height / width 1, 1.5, 2, RPN 300 / 150 boxes before NMS 0.7 and 64 / 32 after (train /
test), 256 anchors and 32 regions sampled per image, RoIAlign 4 x 4 with sampling ratio 2, a
two-layer 256-unit box head; configs/faster_rcnn.py's detector), float32, on the CPU.

    python -m cnnjax.tools.bench_detection [--image_size=64] [--batch=16] [--json]

The same random batch (images, 1-4 boxes per image, classes) feeds both; a training step is
forward + backward + an SGD update (torch: `model(images, targets)` summed losses), inference
is the full detector with post-processing (torch: `model.eval()(images)`). img/s = batch /
the fastest of `--windows` windows of `--steps` steps after two warm-up steps.
"""

import json

import numpy as np
from absl import app, flags

from cnnjax.tools.timing import time_windows

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 64, "Square input size.")
flags.DEFINE_integer("batch", 16, "Images per step.")
flags.DEFINE_integer("steps", 5, "Steps per timed window.")
flags.DEFINE_integer("windows", 3, "Timed windows; the fastest is reported.")
flags.DEFINE_boolean("json", False, "One JSON line per row instead of a table.")

CLASSES = 10


def random_batch(batch: int, size: int, max_boxes: int = 4, seed: int = 0) -> dict:
    """Images [B, S, S, 3] uint8 (what cnnjax's input pipeline batches; its device stage
    normalises them, PyTorch gets them as floats in [0, 1]) and 1..max_boxes boxes per image
    (normalised yxyx)."""
    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch, max_boxes, 4), np.float32)
    valid = np.zeros((batch, max_boxes), np.float32)
    for i in range(batch):
        n = int(rng.integers(1, max_boxes + 1))
        side = rng.uniform(0.19, 0.44, (n, 2))
        lo = rng.uniform(0, 1, (n, 2)) * (1 - side)
        boxes[i, :n] = np.concatenate([lo, lo + side], 1)
        valid[i, :n] = 1
    return {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "boxes": boxes,
        "box_classes": rng.integers(0, CLASSES, (batch, max_boxes)).astype(np.int32),
        "box_valid": valid,
        "index": np.arange(batch, dtype=np.int64),
        "mask": np.ones(batch, np.float32),
    }


def _cnnjax(batch: dict, size: int, steps: int, windows: int) -> dict:
    import functools

    import jax
    import optax

    from cnnjax import models, tasks
    from cnnjax.config import files
    from cnnjax.data.sources import DataInfo, FeatureInfo
    from cnnjax.engine import step
    from cnnjax.engine.state import create_state
    from cnnjax.models import rewrite

    config = files.load("configs/faster_rcnn.py", [])
    names = tuple(str(i) for i in range(CLASSES))
    classes = FeatureInfo((None,), "int64", CLASSES, names)
    boxes = FeatureInfo((None, 4), "float32")
    info = DataInfo.synthetic((size, size, 3), None, boxes=boxes, box_classes=classes)
    task = tasks.create("two_stage", info, image_size=size, **config.task.kwargs)
    model = models.create("two_stage", **{**config.model.kwargs, **task.model_kwargs()})
    model = rewrite.apply_to_model(model, config.train)  # the trainer's conv / BN choice
    state = jax.jit(lambda r: create_state(model, optax.sgd(0.01, momentum=0.9), r,
                                           task.init_inputs()))(jax.random.key(0))  # fmt: skip
    device_batch = jax.device_put(batch)
    train = jax.jit(functools.partial(step.train_step, task=task), donate_argnums=0)
    predict = jax.jit(lambda s, b: task.predict(s.apply_fn, s.variables, b))
    box = {"state": state, "out": None}

    def run_train(n):
        for _ in range(n):
            box["state"], box["out"] = train(box["state"], device_batch)

    def run_infer(n):
        for _ in range(n):
            box["out"] = predict(box["state"], device_batch)

    sync = lambda: jax.block_until_ready(box["out"])
    return {"train": time_windows(run_train, sync, steps, windows),
            "infer": time_windows(run_infer, sync, steps, windows)}  # fmt: skip


def _torchvision_model(size: int):
    import torch
    from torchvision.models import resnet18
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    r = resnet18()
    body = torch.nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2)
    body.out_channels = 128
    anchors = AnchorGenerator(sizes=((12, 18, 26),), aspect_ratios=((1.0, 1.5, 2.0),))
    return FasterRCNN(
        body, num_classes=None, min_size=size, max_size=size,
        image_mean=[0.0] * 3, image_std=[1.0] * 3,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=300, rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_train=64, rpn_post_nms_top_n_test=32,
        rpn_batch_size_per_image=256, box_batch_size_per_image=32,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=4, sampling_ratio=2),
        box_head=TwoMLPHead(128 * 4 * 4, 256),
        box_predictor=FastRCNNPredictor(256, CLASSES + 1),
    )  # fmt: skip


def _torch(batch: dict, size: int, steps: int, windows: int) -> dict:
    import torch

    model = _torchvision_model(size)
    images = [torch.from_numpy(im.transpose(2, 0, 1).astype(np.float32) / 255.0)
              for im in batch["image"]]  # fmt: skip
    targets = []
    for b, c, v in zip(batch["boxes"], batch["box_classes"], batch["box_valid"], strict=True):
        keep = v > 0
        xyxy = b[keep][:, [1, 0, 3, 2]] * size
        targets.append({"boxes": torch.from_numpy(xyxy.copy()),
                        "labels": torch.from_numpy(c[keep].astype(np.int64) + 1)})  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run_train(n):
        model.train()
        for _ in range(n):
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()

    def run_infer(n):
        model.eval()
        with torch.no_grad():
            for _ in range(n):
                model(images)

    return {"train": time_windows(run_train, lambda: None, steps, windows),
            "infer": time_windows(run_infer, lambda: None, steps, windows)}  # fmt: skip


def main(argv):
    del argv
    import os

    import torch

    size, b = FLAGS.image_size, FLAGS.batch
    batch = random_batch(b, size)
    ours = _cnnjax(batch, size, FLAGS.steps, FLAGS.windows)
    theirs = _torch(batch, size, FLAGS.steps, FLAGS.windows)
    for mode in ("train", "infer"):
        row = {
            "model": "faster_rcnn (configs/faster_rcnn.py)", "mode": mode, "batch": b,
            "image_size": size, "cnnjax_img_s": round(b / ours[mode], 2),
            "torchvision_img_s": round(b / theirs[mode], 2),
            "ratio": round(theirs[mode] / ours[mode], 3), "torch_threads": torch.get_num_threads(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }  # fmt: skip
        if FLAGS.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"faster_rcnn {mode:<5} batch {b} {size}px  cnnjax {row['cnnjax_img_s']:8.1f} "
                  f"img/s  torchvision {row['torchvision_img_s']:8.1f} img/s  "
                  f"ratio {row['ratio']:.2f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    app.run(main)
