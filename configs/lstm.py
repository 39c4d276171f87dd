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


def get_config(arg=None):
    tokens = configlib.parse_arg(arg, {*configlib.SEQUENCE_READS, "smoke"})
    read = configlib.sequence_read(tokens)
    c = configlib.base_config()
    configlib.sequence_on_digits(c, "lstm", read, lr=3e-3 if read == "rows" else 2e-3)
    if "smoke" in tokens:
        configlib.apply_smoke(c)
    return c.lock()
