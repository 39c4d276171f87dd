"""Detection ops against torchvision.ops on the same inputs: NMS and RoIAlign / RoI pooling.

    ./launch.sh bench-ops [--boxes=1000,6000] [--json] [--out=FILE]

Each row times one op at one box count, cnnjax (jitted, on the default JAX device) and
torchvision (CPU, float32, torch's default threads), the fastest of `--windows` windows of
`--steps` calls after warm-up. Inputs: random boxes in a 800 x 800 image (NMS: IoU 0.7,
cnnjax keeping at most `--max_output` boxes as Faster R-CNN's proposal stage does, torchvision
keeping all), RoIAlign / RoI pooling: a [50, 50, 256] map at stride 16, 7 x 7 bins,
sampling ratio 2. The two agree on what they return (tests/test_box_ops.py); `ratio` is
torchvision's time over cnnjax's (> 1: cnnjax faster).
"""

import json

import numpy as np
from absl import app, flags

from cnnjax.tools.timing import time_windows

FLAGS = flags.FLAGS
flags.DEFINE_string("boxes", "1000,6000", "Comma-separated box counts.")
flags.DEFINE_integer("max_output", 1000, "cnnjax NMS output size (static).")
flags.DEFINE_integer("steps", 10, "Calls per timed window.")
flags.DEFINE_integer("windows", 3, "Timed windows; the fastest is reported.")
flags.DEFINE_boolean("json", False, "One JSON line per row instead of a table.")
flags.DEFINE_string("out", "", "Also append the JSON rows to this file.")

IMAGE, STRIDE, MAP, CHANNELS, BINS = 800.0, 16, 50, 256, 7


def random_boxes(n: int, seed: int = 0) -> np.ndarray:
    """[n, 4] float32 (y1, x1, y2, x2) pixels inside the IMAGE x IMAGE image, sizes 16-256."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(16, 256, (n, 2))
    lo = rng.uniform(0, 1, (n, 2)) * (IMAGE - size)
    return np.concatenate([lo, lo + size], 1).astype(np.float32)


def _per_call(fn, sync, steps: int, windows: int) -> float:
    """Seconds per call of `fn` (bench.time_windows: the fastest window, after warm-up);
    `sync(out)` waits for the last output."""
    box = {}

    def run(n):
        for _ in range(n):
            box["out"] = fn()

    return time_windows(run, lambda: sync(box["out"]), steps, windows)


def measure(op: str, n: int, steps: int, windows: int, max_output: int) -> dict:
    import jax
    import jax.numpy as jnp
    import torch
    import torchvision.ops as tv

    from cnnjax.ops import nms as nms_ops
    from cnnjax.ops import roi

    boxes = random_boxes(n)
    rng = np.random.default_rng(1)
    xyxy = torch.from_numpy(boxes[:, [1, 0, 3, 2]].copy())
    if op == "nms":
        scores = rng.random(n).astype(np.float32)
        jb, js = jnp.asarray(boxes), jnp.asarray(scores)
        f = jax.jit(lambda b, s: nms_ops.nms(b, s, 0.7, max_output))
        ours = lambda: f(jb, js)
        ts = torch.from_numpy(scores)
        theirs = lambda: tv.nms(xyxy, ts, 0.7)
    else:
        feature = rng.standard_normal((MAP, MAP, CHANNELS)).astype(np.float32)
        jf, jb = jnp.asarray(feature), jnp.asarray(boxes)
        tf = torch.from_numpy(feature.transpose(2, 0, 1)[None].copy())
        rois = torch.cat([torch.zeros(n, 1), xyxy], 1)
        if op == "roi_align":
            f = jax.jit(lambda x, b: roi.roi_align(x, b, BINS, 1 / STRIDE, 2, True))
            theirs = lambda: tv.roi_align(tf, rois, BINS, 1 / STRIDE, 2, True)
        else:
            f = jax.jit(lambda x, b: roi.roi_pool(x, b, BINS, 1 / STRIDE))
            theirs = lambda: tv.roi_pool(tf, rois, BINS, 1 / STRIDE)
        ours = lambda: f(jf, jb)
    with torch.no_grad():
        t_theirs = _per_call(theirs, lambda o: o, steps, windows)
    t_ours = _per_call(ours, jax.block_until_ready, steps, windows)
    return {
        "op": op, "boxes": n, "cnnjax_ms": round(1e3 * t_ours, 3),
        "torchvision_ms": round(1e3 * t_theirs, 3), "ratio": round(t_theirs / t_ours, 3),
        "device": str(jax.devices()[0].platform), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def main(argv):
    del argv
    rows = []
    for n in (int(v) for v in FLAGS.boxes.split(",")):
        for op in ("nms", "roi_align", "roi_pool"):
            rows.append(measure(op, n, FLAGS.steps, FLAGS.windows, FLAGS.max_output))
            r = rows[-1]
            if FLAGS.json:
                print(json.dumps(r), flush=True)
            else:
                print(f"{r['op']:<10} {r['boxes']:>6} boxes  cnnjax {r['cnnjax_ms']:>9.3f} ms  "
                      f"torchvision {r['torchvision_ms']:>9.3f} ms  ratio {r['ratio']:.2f}x "
                      f"({r['device']})", flush=True)  # fmt: skip
    if FLAGS.out:
        with open(FLAGS.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    app.run(main)
