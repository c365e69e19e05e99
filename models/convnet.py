"""A small residual CNN trunk shared by the identity embedder and the auto-rater
(convolutions are much cheaper than a ViT on a CPU at 32-64 px)."""
from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ConvTrunk(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> feature vector (B, width * 4)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        # stride 2 from the first block: full-resolution convolutions are what cost on a CPU
        self.stages = nn.Sequential(_Block(w, w, 2), _Block(w, 2 * w, 2), _Block(2 * w, 4 * w, 2))
        self.out_dim = 4 * w

    def forward(self, x):
        return self.stages(self.stem(x)).mean((2, 3))


def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1], the pixel-space convention."""
    return images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0
