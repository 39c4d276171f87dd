"""An LSTM (flax's OptimizedLSTMCell) reading the embedded 8x8 handwritten digits as a sequence.

    ./launch.sh train --config=configs/lstm.py --workdir=runs/lstm

Measured (2026-12-01, 2-core CPU, experiments/rnn_lstm_gru, seed 0): test accuracy
**97.49%** row by row (2,000 steps, 3m59s), 94.43% pixel by pixel (4,000 steps, 11m31s).
Arguments: `rows` (default: 8 steps of 8 pixels, row-wise MNIST's
set-up), `pixels` (64 steps of 1 pixel in raster order, pixel MNIST's long-range set-up),
`smoke` (seconds, for tests).

Recipe: 128 hidden units, one layer, batch 128, AdamW at a few 1e-3 with the global gradient
norm clipped to 1, as in the row-wise MNIST LSTMs of the tutorials (yunjey's pytorch-tutorial:
128 hidden, batch 100, Adam 0.01, 0.003 for its bidirectional twin; TensorFlow-Examples: 128
hidden, batch 128, Adam 1e-3) and the pixel-MNIST comparisons (Le et al. 2015, 'A Simple Way
to Initialize Recurrent Networks of Rectified Linear Units': gradients clipped at norm 1;
Arjovsky et al. 2016: an LSTM of 128 units, RMSProp 1e-3). The pixel read gets a lower rate and
twice the steps (backpropagation through 64 steps, not 8). The 1,438 training images make
2,000 steps about 180 epochs; the measured run decides whether fewer suffice.
"""

from cnnjax.config import base as configlib

READS = ("rows", "pixels")


def get_config(arg=None):
    tokens = configlib.parse_arg(arg, {*READS, "smoke"})
    reads = [t for t in READS if t in tokens]
    if len(reads) > 1:
        raise configlib.ConfigError(f"choose one read of {list(READS)}, got {reads}")
    read = reads[0] if reads else "rows"
    c = configlib.base_config()
    c.model.name = "lstm"
    c.model.kwargs.read = read
    # Per-time-step input gradients at every evaluation, for the read the model makes: a
    # one-way reference (--config.model.kwargs.read=pixels moves it too;
    # --config.task.kwargs.step_grads='' turns it off and leaves the read alone).
    c.task.kwargs.step_grads = c.model.kwargs.get_ref("read") + ""
    c.model.kwargs.hidden_size = 128
    c.model.kwargs.num_layers = 1
    c.model.kwargs.bidirectional = False
    c.data.name = "digits"
    c.data.image_size = 8  # the digits' own size: one row (or pixel) per time step
    c.data.batch_size = 128
    c.optim.name = "adamw"
    c.optim.learning_rate = 3e-3 if read == "rows" else 2e-3
    c.optim.weight_decay = 1e-4
    c.optim.weight_decay_on = "kernels"
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 100
    c.optim.grad_clip_norm = 1.0  # backpropagation through time explodes (Pascanu et al. 2013)
    c.train.num_steps = 2000 if read == "rows" else 4000
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 500
    c.eval.every_steps = 500
    if "smoke" in tokens:
        configlib.apply_smoke(c)
    return c.lock()
