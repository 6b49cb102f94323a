"""Models and inputs shared by the attribution-method tests (closed-form toys, a conditioned ResNet-18).

Example:
    >>> net, w, c = linear_model(np.ones((2, 2, 3), np.float32), 0.5)   # f(x) = sum(w * x) + c    # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from torch import nn


class NHWCLinear(nn.Module):
    """f(x) = w . x + c for class 0 (and -(w . x) for class 1), w given channels last (H, W, C)."""

    def __init__(self, w: np.ndarray, c: float):
        super().__init__()
        self.w = nn.Parameter(torch.from_numpy(np.ascontiguousarray(w, np.float32)))
        self.c = nn.Parameter(torch.tensor(float(c)))

    def forward(self, x):  # x: (N, C, H, W)
        z = (x.permute(0, 2, 3, 1) * self.w).sum(dim=(1, 2, 3)) + self.c
        return torch.stack([z, -z], dim=1)


class SumOfSquares(nn.Module):
    """f(x) = sum x^2 (class 0) and -sum x^2 (class 1)."""

    def forward(self, x):
        z = (x * x).sum(dim=(1, 2, 3))
        return torch.stack([z, -z], dim=1)


def linear_model(w: np.ndarray, c: float) -> nn.Module:
    return NHWCLinear(w, c).eval()


def conditioned_resnet18(seed: int = 0, classes: int = 10) -> nn.Module:
    """A random torchvision ResNet-18 whose BatchNorm scales and statistics look like a trained network's
    (with default initialisation a random ResNet is numerically chaotic: float32 rounding alone moves maps)."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=classes).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    for name, module in net.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1, generator=gen)
            module.running_var.uniform_(0.5, 1.5, generator=gen)
            module.bias.data.uniform_(-0.1, 0.1, generator=gen)
            module.weight.data.uniform_(0.5, 1.0, generator=gen)
            if name.endswith("bn2"):  # last BN of each residual branch: small, as in trained ResNets
                module.weight.data.mul_(0.2)
    return net


def normal_inputs(n: int, size: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Standard-normal model input (N, H, W, C): negative values, so never taken for a photo."""
    return np.random.default_rng(seed).standard_normal((n, size, size, channels)).astype(np.float32)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """|a - b| / |b| over the whole array."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))
