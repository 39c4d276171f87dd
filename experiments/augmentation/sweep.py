"""Data augmentation on vs off in a low-data regime: 10% of the digits' training set.

    ./launch.sh sweep experiments/augmentation/sweep.py --parallel=2
    ./launch.sh report experiments/augmentation/sweep.py --readme

ResNet-20 (configs/resnet20_cifar.py:digits, option-A shortcuts) at 16 px trained on the
first 10% of the embedded digits' train split (`data.train_split='train[:10%]'`: 144
images, 11-19 per class) and tested on the whole test split (359), with one augmentation
of the course's lecture at a time (`data.aug.*`), all of them but the flip together, and
none. SGD momentum 0.9, learning rate 0.1 divided by 10 at 50% and 75%, weight decay 1e-4,
batch 64, STEPS steps (~270 epochs of the 144 images), seeds 0-2. Runs go to
runs/sweeps/augmentation/<name>.
"""

from cnnjax.tools.sweep import Point, short_run

STEPS = 600
SEEDS = (0, 1, 2)
NONE = {
    "data.aug.crop_padding": 0,
    "data.aug.flip": False,
    "data.aug.noise_std": 0.0,
    "data.aug.blur_prob": 0.0,
    "data.aug.color_jitter": 0.0,
}
# name -> the augmentation settings that differ from NONE
VARIANTS = {
    "none": {},
    "crop": {"data.aug.crop_padding": 2},  # random 2-pixel shifts (zero padding)
    "flip": {"data.aug.flip": True},  # left-right mirror: a mirrored digit is another symbol
    "noise": {"data.aug.noise_std": 0.3},
    "blur": {"data.aug.blur_prob": 0.5, "data.aug.blur_sigma": 0.7},
    "jitter": {"data.aug.color_jitter": 0.4},  # grey images: brightness and contrast
    "all_but_flip": {
        "data.aug.crop_padding": 2,
        "data.aug.noise_std": 0.3,
        "data.aug.blur_prob": 0.5,
        "data.aug.blur_sigma": 0.7,
        "data.aug.color_jitter": 0.4,
    },
}


def get_sweep() -> list[Point]:
    return [
        Point(
            name=f"{name}_s{seed}",
            config="configs/resnet20_cifar.py:digits",
            overrides={
                "data.train_split": "train[:10%]",
                "data.batch_size": 64,
                **short_run(STEPS, log_every=50),
                **NONE,
                **aug,
            },
            seed=seed,
        )
        for seed in SEEDS
        for name, aug in VARIANTS.items()
    ]
