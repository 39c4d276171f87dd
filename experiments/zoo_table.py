"""The README's zoo table, generated from the model registry (parameters and MACs of every
registered model at its usual input, from `cnnjax.analysis.arithmetic`).

    python experiments/zoo_table.py            # print the table
    python experiments/zoo_table.py --write    # replace it in README.md, between its markers

ImageNet models at 224 px, 1000 classes (Xception 299 px); CIFAR nets at 32 px, 10 classes;
LeNet-5 at 32x32x1, 10 classes; the autoencoder at 16x16x1 (as configs/autoencoder.py);
segmentation models at 224 px with 21 classes (PASCAL VOC); the detectors at their papers'
inputs with PASCAL VOC's 20 classes (YOLO v1 448 px, SSD 300 px, the two-stage detector
512 px); the recurrent models on the 8x8 digits read row by row (cnn_lstm at 16 px), 10
classes.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"


DETECTION_INPUTS = {"yolo_v1": 448, "ssd": 300, "two_stage": 512, "faster_rcnn": 512}


def input_for(name: str) -> tuple[tuple[int, int, int], int]:
    """(input shape, classes) a model is usually measured at."""
    if name.endswith("_cifar"):
        return (32, 32, 3), 10
    if name == "lenet5":
        return (32, 32, 1), 10
    if name == "autoencoder":
        return (16, 16, 1), 0
    if name == "xception":
        return (299, 299, 3), 1000
    if name in _segmentation():
        return (224, 224, 3), 21  # PASCAL VOC's classes
    if name in DETECTION_INPUTS:
        return (DETECTION_INPUTS[name],) * 2 + (3,), 20  # PASCAL VOC's classes
    if name == "cnn_lstm":
        return (16, 16, 1), 10  # as configs/cnn_lstm.py
    if name in ("rnn", "lstm", "gru"):
        return (8, 8, 1), 10  # the digits read row by row, as configs/{rnn,lstm,gru}.py
    return (224, 224, 3), 1000


def _segmentation() -> set[str]:
    from cnnjax.models.segmentation import MODELS

    return set(MODELS)


def rows() -> list[tuple[str, str, int, float]]:
    """(model, input, params, GMACs) for every registry entry, in name order."""
    from cnnjax import models
    from cnnjax.analysis import arithmetic

    out = []
    for name in models.names():
        shape, classes = input_for(name)
        s = arithmetic.analyze(name, shape, num_classes=classes)
        out.append((name, "x".join(map(str, shape)), s.params, s.macs / 1e9))
    return out


def table(found: list[tuple[str, str, int, float]]) -> str:
    lines = ["| model | input | params | GMACs |", "|---|---|---:|---:|"]
    lines += [f"| {n} | {i} | {p:,} | {g:.3f} |" for n, i, p, g in found]
    return "\n".join(lines)


def write(readme: Path, text: str) -> None:
    content = readme.read_text()
    if START not in content or END not in content:
        sys.exit(f"{readme} has no {START} ... {END} block to replace")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = p.parse_args(argv)
    text = table(rows())
    if args.write:
        write(ROOT / "README.md", text)
    print(text)


if __name__ == "__main__":
    main()
