"""Every notebook in notebooks/ runs top to bottom (nbclient, this venv's kernel) on a small
run trained here, so none of them rots; and none is stored with outputs."""

import os
import sys

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from cnnjax.engine import trainer
from tests.conftest import ROOT, load_config

NOTEBOOKS = ROOT / "notebooks"
# notebook -> the small run it is executed against: config file, argument, overrides (smaller
# than :smoke where that cuts the compile time, which dominates on a CPU)
RUNS = {
    "classification": ("configs/resnet20_cifar.py", "digits,smoke", {"data.image_size": 16}),
    "autoencoder": ("configs/autoencoder.py", "smoke", {}),
    "detection": (
        "configs/yolo_v1.py",
        "smoke",
        {"model.kwargs.head_width": 16, "model.kwargs.hidden": 32, "data.batch_size": 4},
    ),
    "segmentation": (
        "configs/unet.py",
        "smoke",
        {"model.kwargs.depth": 2, "model.kwargs.width": 8, "data.batch_size": 4},
    ),
}
TINY = {
    "train.num_steps": 2,
    "train.checkpoint_every_steps": 2,
    "eval.every_steps": 2,
    "data.max_eval_examples": 16,
}
CELL_TIMEOUT_S = 300


def read(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def test_every_notebook_has_a_run_here():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(RUNS)


def test_the_kernel_is_this_python():
    # 'python3' is ipykernel's spec in the venv; jupyter_client runs its 'python' as ours.
    assert KernelManager(kernel_name="python3").format_kernel_cmd()[0] == sys.executable


@pytest.mark.parametrize("name", sorted(RUNS))
def test_stored_without_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, name
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{name}.ipynb stores outputs in code cells {dirty}: clear them"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_runs_top_to_bottom_on_a_small_run(name, tmp_path):
    workdir = tmp_path / "run"
    path, arg, overrides = RUNS[name]
    trainer.train_and_evaluate(load_config(path, arg, {**TINY, **overrides}), workdir)
    nb = read(name)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # the kernel starts in notebooks/
    )
    client.execute(env={**os.environ, "CNNJAX_RUN": str(workdir)})  # raises on a cell error
    # Figures render inline (nothing switched pyplot to a non-interactive backend).
    blank = [
        i
        for i, c in enumerate(nb.cells)
        if "plt.show()" in c.source and not any("image/png" in o.get("data", {}) for o in c.outputs)
    ]
    assert not blank, f"{name}: cells {blank} call plt.show() but show no figure"
