"""RNN vs LSTM vs GRU on the embedded digits read row by row (8 steps) and pixel by pixel
(64 steps), and the simple RNN's tanh vs relu recurrence with and without gradient clipping.

    ./launch.sh sweep experiments/rnn_lstm_gru/sweep.py
    ./launch.sh report experiments/rnn_lstm_gru/sweep.py

Every point is configs/{rnn,lstm,gru}.py with its read (128 hidden units, batch 128, AdamW,
clipping at global norm 1 unless the name says `noclip`); every evaluation logs the gradient
norm of the test loss with respect to each time step's input (`input_grad_norm`). Runs go to
runs/sweeps/rnn_lstm_gru/<name>.
"""

from cnnjax.tools.sweep import Point

SEED = 0


def get_sweep() -> list[Point]:
    points = []
    for read in ("rows", "pixels"):
        for cell in ("rnn", "lstm", "gru"):
            points.append(
                Point(name=f"{cell}_{read}", config=f"configs/{cell}.py:{read}", seed=SEED)
            )
    # The simple RNN on the long (pixel) read: tanh (saturating: gradients vanish) vs relu
    # (the IRNN: unbounded, gradients can explode), each without clipping.
    points.append(Point(name="rnn_pixels_noclip", config="configs/rnn.py:pixels",
                        overrides={"optim.grad_clip_norm": 0.0}, seed=SEED))  # fmt: skip
    for clip, tag in ((1.0, ""), (0.0, "_noclip")):
        points.append(Point(name=f"rnn_relu_pixels{tag}", config="configs/rnn.py:pixels,relu",
                            overrides={"optim.grad_clip_norm": clip}, seed=SEED))  # fmt: skip
    return points
