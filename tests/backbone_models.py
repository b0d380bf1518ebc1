"""Plain PyTorch modules (no netspec in them) that the backbone tests name in `backbone: {python: ...}`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """A residual block: conv-bn-relu, conv-bn, add the (projected) input, relu (called twice: relu, relu_1)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.down = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.down(x) if self.down is not None else x))


class TinyResNet(nn.Module):
    """conv1 → layer1 (2 blocks) → layer2 (2 blocks, stride 2) → pool → fc."""

    def __init__(self, classes: int = 3, width: int = 4, channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, 1, 1)
        self.layer1 = nn.Sequential(Block(width, width), Block(width, width))
        self.layer2 = nn.Sequential(Block(width, 2 * width, 2), Block(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Gate(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class Gated(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.gate = Gate()
        self.fc = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x):
        return self.fc(self.gate(self.conv(x)).flatten(1))


class Shared(nn.Module):
    """A parameter used functionally (a get_attr) and a module called twice: each counted once; a buffer that
    is not saved."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.scale = nn.Parameter(torch.full((1, 1, 1, 1), 0.5))
        self.register_buffer("offset", torch.full((1,), 0.25), persistent=False)  # not in the state dict
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.conv(self.conv(x) * self.scale) + self.offset
        return self.fc(x.view(x.size(0), -1))


def make_tiny(classes: int = 3) -> TinyResNet:
    return TinyResNet(classes)
