"""FCN-32s vs FCN-8s vs FCN-16s on the embedded digit scenes (the FCN paper's skip study).

    ./launch.sh sweep experiments/fcn_skips/sweep.py
    ./launch.sh report experiments/fcn_skips/sweep.py

Each point is configs/fcn.py with its variant (VGG-16, fc6/fc7 512 wide, 600 steps at batch
16, 64 px); runs go to runs/sweeps/fcn_skips/<variant>.
"""

from cnnjax.tools.sweep import Point

# The two ends of the paper's study first, then FCN-16s (about 15 minutes each on a 2-core
# CPU: a sweep stopped after two points still compares the ends).
VARIANTS = ("32s", "8s", "16s")


def get_sweep() -> list[Point]:
    return [Point(name=f"fcn{v}", config=f"configs/fcn.py:{v}", seed=0) for v in VARIANTS]
