"""Transfer learning: a backbone pretrained on digits 0-4, then on digits 5-9 fine-tuned with
a small learning rate vs a linear probe vs trained from scratch, at three training-set sizes.

    ./launch.sh sweep experiments/transfer/pretrain.py      # first: the source run
    ./launch.sh sweep experiments/transfer/sweep.py --parallel=2
    ./launch.sh report experiments/transfer/sweep.py --readme

Every point is configs/resnet20_cifar.py:digits at 16 px on `data.classes=(5, 6, 7, 8, 9)`
(train and test), with the first 5%, 20% or all of the train split before that selection
(36, 143 and 715 images of those classes), 2-pixel random shifts, batch 64, STEPS steps,
cosine schedule:
- scratch: fresh weights, SGD at 0.1 (the recipe's rate);
- finetune: every weight from the source run (runs/sweeps/transfer_pretrain/digits0to4_s0,
  `init.source='cnnjax'`), its classifier `fc` fresh, SGD at 0.01;
- probe: the same start with the backbone frozen (`init.freeze_backbone`), only `fc` trains,
  at 0.1;
- finetune_lr0.1: the fine-tune start at the scratch rate 0.1 (a control: the start, not the
  rate, is what differs from scratch).
Seeds 0 and 1 (the seed moves the initialisation of what is fresh and the data order).
Runs go to runs/sweeps/transfer/<name>.
"""

from cnnjax.tools.sweep import Point, short_run

STEPS = 600
SEEDS = (0, 1)
SOURCE = "runs/sweeps/transfer_pretrain/digits0to4_s0"
TARGET_CLASSES = (5, 6, 7, 8, 9)
SIZES = {"5pct": "train[:5%]", "20pct": "train[:20%]", "all": "train"}
MODES = {
    "scratch": {"optim.learning_rate": 0.1},
    "finetune": {"optim.learning_rate": 0.01, "init.checkpoint": SOURCE, "init.source": "cnnjax"},
    "probe": {
        "optim.learning_rate": 0.1,
        "init.checkpoint": SOURCE,
        "init.source": "cnnjax",
        "init.freeze_backbone": True,
    },
    "finetune_lr0.1": {
        "optim.learning_rate": 0.1,
        "init.checkpoint": SOURCE,
        "init.source": "cnnjax",
    },
}


def get_sweep() -> list[Point]:
    return [
        Point(
            name=f"{mode}_{size}_s{seed}",
            config="configs/resnet20_cifar.py:digits",
            overrides={
                "data.classes": TARGET_CLASSES,
                "data.train_split": split,
                "data.batch_size": 64,
                "optim.schedule": "cosine",
                **short_run(STEPS, log_every=50),
                **settings,
            },
            seed=seed,
        )
        for seed in SEEDS
        for size, split in SIZES.items()
        for mode, settings in MODES.items()
    ]
