"""A vanilla (Elman) RNN (flax's SimpleCell) reading the embedded 8x8 handwritten digits as a
sequence: the baseline the gated cells of configs/lstm.py and configs/gru.py improve on.

    ./launch.sh train --config=configs/rnn.py --workdir=runs/rnn

Measured (2026-12-01, 2-core CPU, experiments/rnn_lstm_gru, seed 0): test accuracy 97.77%
row by row (2,000 steps, 3m41s), 85.52% pixel by pixel (4,000 steps, ~6m25s of training),
90.25% pixel by pixel with `relu` (3m08s). Arguments: `rows` (default: 8 steps of 8
pixels), `pixels` (64 steps of 1 pixel, the long-range read), `relu` (Le et al. 2015's IRNN: relu
units, the recurrent kernel initialised to the identity and the input kernel to
N(0, 0.001^2)), `smoke` (seconds, for tests); `relu` combines with either read.

Recipe: configs/lstm.py's (128 hidden units, batch 128, gradients clipped at global norm 1, as
Le et al. 2015 clip every recurrent net they train on pixel MNIST) at AdamW 2e-3, and 1e-3 for
the IRNN: relu units are unbounded, and the Keras reproduction of the IRNN (keras
examples/mnist_irnn.py: 100 units, identity recurrent init, clip norm 1) needed RMSProp at
1e-6 on 784 steps to stay stable; over 64 steps Adam at 1e-3 with clipping is the usual choice.
"""

from cnnjax.config import base as configlib


def get_config(arg=None):
    tokens = configlib.parse_arg(arg, {*configlib.SEQUENCE_READS, "relu", "smoke"})
    read, irnn = configlib.sequence_read(tokens), "relu" in tokens
    c = configlib.base_config()
    configlib.sequence_on_digits(c, "rnn", read, lr=1e-3 if irnn else 2e-3)
    c.model.kwargs.activation = "relu" if irnn else "tanh"
    c.model.kwargs.cell_init = "irnn" if irnn else "flax"
    if "smoke" in tokens:
        configlib.apply_smoke(c)
    return c.lock()
