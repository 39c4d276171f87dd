"""PyTorch twins of the CIFAR ResNets (He et al. 2015, option-A shortcuts) for cnnjax.tools.bench.

torchvision has no CIFAR ResNets; this is the same architecture as
cnnjax/models/resnet_cifar.py (3x3 stem of 16, three stages of n basic blocks, zero-padded
strided identity shortcuts, global pool, linear head), used only for speed comparisons.
"""

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        sc = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
            sc = nn.functional.pad(sc, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return torch.relu(y + sc)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for i in range(3):
            for j in range(n):
                cout = width * 2**i
                blocks.append(_Block(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def cifar_resnet(depth: int, num_classes: int) -> CifarResNet:
    return CifarResNet(depth, num_classes)


class RowSequenceClassifier(nn.Module):
    """The twin of cnnjax's `rnn` / `lstm` / `gru` at their defaults: an NCHW image read row
    by row (H steps of W*C features), one layer of `hidden` units (torch.nn.RNN with tanh,
    LSTM or GRU), a linear head on the last hidden state."""

    CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

    def __init__(self, cell: str, in_features: int, num_classes: int, hidden: int = 128):
        super().__init__()
        self.rnn = self.CELLS[cell](in_features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        b, c, h, w = x.shape
        seq = x.permute(0, 2, 3, 1).reshape(b, h, w * c)  # NHWC rows, as cnnjax reads them
        out, _ = self.rnn(seq)
        return self.fc(out[:, -1])
