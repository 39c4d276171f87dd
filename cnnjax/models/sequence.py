"""Recurrent classifiers of the course's sequence lecture: a vanilla (Elman) RNN, an LSTM
(Hochreiter & Schmidhuber 1997) and a GRU (Cho et al. 2014) reading an image as a sequence,
and a CNN-LSTM hybrid reading the columns of a convolutional feature map.

The cells are flax's own (`nn.SimpleCell`, `nn.OptimizedLSTMCell`, `nn.GRUCell`), scanned
over time by `nn.RNN` (two of them in `nn.Bidirectional`), `num_layers` deep (`layer0`,
`layer1`, ...; a bidirectional layer holds `forward_rnn` and `backward_rnn`). The head `fc`
classifies the top layer's last hidden state, forward then backward concatenated (torch's
h_n); `num_classes=0` builds no head and returns 'pre_logits'.

`read` turns an NHWC image [B, H, W, C] into a sequence [B, T, D]:
  'rows'     T = H steps of D = W*C features (row-wise MNIST: 28 of 28; digits: 8 of 8)
  'columns'  T = W steps of D = H*C features (the CNN-LSTM's default, as CRNN reads a map)
  'pixels'   T = H*W steps of D = C features in raster order (pixel MNIST: 784 steps; digits:
             64), the long-range case
A sequence longer than `max_steps` is a ConfigError (a 'pixels' read of a 224 px image would
be a 50,176-step scan).

Parameters per layer and direction, flax's layout (x: the layer's input features, x = W*C,
H*C or C for layer 0, h or 2h above it; h: hidden_size):
  SimpleCell  h(x + h) + h     Dense `i` (x -> h) with bias, Dense `h` (h -> h) without: the
                               two are summed, so one bias suffices (torch.nn.RNN keeps b_ih
                               and b_hh: h more)
  LSTM        4(h(x + h) + h)  for each gate i, f, g, o an input Dense `i?` without bias and a
                               hidden Dense `h?` with bias, summed (torch.nn.LSTM: 4h more)
  GRU         3h(x + h) + 4h   input Dense `ir`, `iz`, `in` with bias, hidden `hr`, `hz`
                               without; `hn` keeps its own bias because r multiplies it,
                               n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) (torch.nn.GRU
                               also has b_hr and b_hz: 2h more)
and the head (h or 2h) * num_classes + num_classes.

Features: 'sequence' [B, T, D] (the input as read), 'hidden' [B, T, h or 2h] (the top layer's
outputs), 'pre_logits' [B, h or 2h]; the CNN-LSTM adds its conv maps under 'stride{s}' (and
'stem' / 'stage{k}', see layers.feature_name).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ConfigError, unknown_name
from cnnjax.models.layers import has_classifier, record_map

ModuleDef = Any
READS = ("rows", "columns", "pixels")
ACTIVATIONS: dict[str, Callable] = {
    "tanh": nn.tanh,
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "identity": lambda x: x,
}


def _identity_init(key, shape, dtype=jnp.float32):
    del key
    return jnp.eye(shape[0], shape[1], dtype=dtype)


# (input kernel, recurrent kernel) initialisers of the SimpleCell. 'flax': the cell's defaults
# (LeCun normal, orthogonal). 'irnn': Le et al. 2015's IRNN, W_hh = I and W_ih ~ N(0, 0.001^2):
# a relu RNN that starts by carrying its state unchanged; with unit-variance input weights its
# state would grow with every step (the sum of 64 pixels' contributions on a pixel read).
INITS = {
    "flax": (nn.initializers.lecun_normal(), nn.initializers.orthogonal()),
    "irnn": (nn.initializers.normal(1e-3), _identity_init),
}


def as_sequence(x, read: str):
    """x: [B, H, W, C] -> [B, T, D]: rows (H, W*C), columns (W, H*C) or pixels (H*W, C)."""
    b, h, w, c = x.shape
    if read == "rows":
        return x.reshape(b, h, w * c)
    if read == "columns":
        return x.transpose(0, 2, 1, 3).reshape(b, w, h * c)
    return x.reshape(b, h * w, c)


def num_steps(shape: Sequence[int], read: str) -> int:
    """The sequence length of a read of an image of `shape` (H, W, C)."""
    h, w, _ = shape
    return {"rows": h, "columns": w, "pixels": h * w}[read]


class _Recurrent(nn.Module):
    """Shared body: read an image, run stacked (bi)directional RNN layers, classify the last
    state. Subclasses say which flax cell a layer uses (`CELL`, `cell_kwargs`, `hidden_of`)."""

    CELL: ClassVar[type] = nn.SimpleCell

    num_classes: int
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    read: str = "rows"
    max_steps: int = 1024
    dtype: Any = jnp.float32

    @nn.nowrap
    def cell_kwargs(self) -> dict:
        """Extra constructor arguments of `CELL` (beyond features and dtype)."""
        return {}

    @nn.nowrap
    def make_cell(self) -> nn.RNNCellBase:
        """A fresh unbound cell (parent=None, so that the nn.RNN it is given adopts it as
        `cell`; built with this module as its parent, it would put its parameters here)."""
        return self.CELL(self.hidden_size, dtype=self.dtype, parent=None, **self.cell_kwargs())

    @nn.nowrap
    def hidden_of(self, carry):
        """The hidden state h [B, h] in a cell's carry (an LSTM's carry is (c, h))."""
        return carry

    def _check(self, x) -> None:
        what = type(self).__name__
        for field in ("hidden_size", "num_layers"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{what} {field} must be >= 1, got {getattr(self, field)}")
        if self.read not in READS:
            raise unknown_name("read", self.read, READS)
        if x.ndim != 4 or min(x.shape[1:]) < 1:
            raise ConfigError(
                f"{what} reads NHWC images [B, H, W, C] with H, W, C >= 1, got an input of "
                f"shape {tuple(x.shape)}"
            )
        steps = num_steps(x.shape[1:], self.read)
        if steps > self.max_steps:
            h, w, c = x.shape[1:]
            raise ConfigError(
                f"{what} read='{self.read}' of a {h}x{w}x{c} input makes {steps} time steps, "
                f"more than max_steps={self.max_steps}; read 'rows' ({h} steps) or "
                f"'columns' ({w}), use a smaller data.image_size, or raise max_steps"
            )

    @nn.nowrap
    def _zero_carry(self, cell, inputs):
        # In the compute dtype: a float32 carry (flax's default) would turn into bfloat16 after
        # one SimpleCell step, and scan needs a carry of one dtype.
        carry = cell.initialize_carry(jax.random.key(0), inputs[:, 0].shape)
        return jax.tree.map(lambda a: a.astype(self.dtype), carry)

    @nn.nowrap
    def _layer(self, y, name: str):
        """One layer: y [B, T, x] -> (outputs [B, T, h or 2h], last state [B, h or 2h])."""
        if not self.bidirectional:
            cell = self.make_cell()
            rnn = nn.RNN(cell, return_carry=True, name=name)
            carry, y = rnn(y, initial_carry=self._zero_carry(cell, y))
            return y, self.hidden_of(carry)
        fwd, bwd = self.make_cell(), self.make_cell()
        fwd_rnn, bwd_rnn = nn.RNN(fwd, parent=None), nn.RNN(bwd, parent=None)
        layer = nn.Bidirectional(fwd_rnn, bwd_rnn, return_carry=True, name=name)
        carry0 = (self._zero_carry(fwd, y), self._zero_carry(bwd, y))
        (cf, cb), y = layer(y, initial_carry=carry0)
        return y, jnp.concatenate([self.hidden_of(cf), self.hidden_of(cb)], axis=-1)

    @nn.nowrap
    def _classify(self, seq, feats: dict):
        feats["sequence"] = seq
        y = seq.astype(self.dtype)
        for k in range(self.num_layers):
            y, last = self._layer(y, f"layer{k}")
        feats["hidden"], feats["pre_logits"] = y, last
        if not has_classifier(self.num_classes):
            return last, feats
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(last)
        return logits.astype(jnp.float32), feats

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check(x)
        return self._classify(as_sequence(x, self.read), {})


class RNNClassifier(_Recurrent):
    """Elman RNN, h' = act(W_i x + b_i + W_h h) (nn.SimpleCell); activation='relu' with
    cell_init='irnn' is Le et al. 2015's IRNN."""

    activation: str = "tanh"
    cell_init: str = "flax"  # 'irnn': identity recurrent kernel, N(0, 0.001^2) input kernel

    def _check(self, x) -> None:
        super()._check(x)
        if self.activation not in ACTIVATIONS:
            raise unknown_name("activation", self.activation, ACTIVATIONS)
        if self.cell_init not in INITS:
            raise unknown_name("cell_init", self.cell_init, INITS)

    @nn.nowrap
    def cell_kwargs(self):
        kernel_init, recurrent_init = INITS[self.cell_init]
        return dict(
            activation_fn=ACTIVATIONS[self.activation],
            kernel_init=kernel_init,
            recurrent_kernel_init=recurrent_init,
        )


class LSTMClassifier(_Recurrent):
    """LSTM (nn.OptimizedLSTMCell: nn.LSTMCell's parameters and arithmetic, with the four gates'
    kernels concatenated into one matmul per side)."""

    CELL: ClassVar[type] = nn.OptimizedLSTMCell

    @nn.nowrap
    def hidden_of(self, carry):
        return carry[1]  # (c, h)


class GRUClassifier(_Recurrent):
    """GRU (nn.GRUCell): h' = (1 - z) * n + z * h."""

    CELL: ClassVar[type] = nn.GRUCell


class CNNLSTM(LSTMClassifier):
    """A conv stack (conv k x k 'same' -> norm -> act per entry of `widths`, downsampling by
    `strides`), then the LSTM reading the map's columns: W' steps of H'*C' features.

    At 8x8x1 with the defaults: stride1 [B, 8, 8, 32], stride2 [B, 4, 4, 64], 4 steps of 256;
    at 16 px (configs/cnn_lstm.py) 8 steps of 512.
    """

    widths: Sequence[int] = (32, 64)
    strides: Sequence[int] = (1, 2)
    kernel_size: int = 3
    read: str = "columns"
    conv: ModuleDef = nn.Conv
    norm: ModuleDef | None = nn.BatchNorm  # None: convolutions with bias, no normalisation
    act: Callable = nn.relu

    def _check_stack(self) -> None:
        if not self.widths or len(self.widths) != len(self.strides):
            raise ConfigError(
                f"CNNLSTM needs one stride per conv width, got widths={tuple(self.widths)} "
                f"and strides={tuple(self.strides)}"
            )
        if min(self.widths) < 1 or min(self.strides) < 1 or self.kernel_size < 1:
            raise ConfigError(
                f"CNNLSTM widths, strides and kernel_size must be >= 1, got widths="
                f"{tuple(self.widths)}, strides={tuple(self.strides)}, "
                f"kernel_size={self.kernel_size}"
            )

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check_stack()
        if x.ndim != 4:
            raise ConfigError(f"CNNLSTM reads NHWC images [B, H, W, C], got shape {x.shape}")
        p = (self.kernel_size - 1) // 2
        k = (self.kernel_size, self.kernel_size)
        conv = functools.partial(
            self.conv, kernel_size=k, padding=((p, p), (p, p)), use_bias=self.norm is None,
            dtype=self.dtype,
        )  # fmt: skip
        norm = self.norm and functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )
        feats, stride = {}, 1
        x = x.astype(self.dtype)
        for i, (width, s) in enumerate(zip(self.widths, self.strides, strict=True)):
            x = conv(width, strides=(s, s), name=f"conv{i}")(x)
            x = self.act(norm(name=f"bn{i}")(x) if norm else x)
            stride *= s
            record_map(feats, x, stride)
        self._check(x)
        return self._classify(as_sequence(x, self.read), feats)


MODELS = {
    "rnn": RNNClassifier,
    "lstm": LSTMClassifier,
    "gru": GRUClassifier,
    "cnn_lstm": CNNLSTM,
}
