"""Models and helpers shared by the evaluation tests: closed-form toys, RISE's own blur, model snapshots.

Example:
    >>> net = additive_model(np.array([1.0, -2.0, 0.5]).reshape(1, 3))   # class-0 logit = sum c_j x_j  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn


class Additive(nn.Module):
    """Class-0 logit = sum_j c_j x_j over the pixels of a one-channel image, class-1 logit = 0, so that
    p(class 0) = sigmoid(sum of the contributions c_j x_j): every pixel's contribution is known exactly."""

    def __init__(self, c: np.ndarray):
        super().__init__()
        self.c = nn.Parameter(torch.from_numpy(np.asarray(c, np.float32)))

    def forward(self, x):  # (N, 1, H, W)
        z = (x[:, 0] * self.c).sum(dim=(1, 2))
        return torch.stack([z, torch.zeros_like(z)], dim=1)


class Linear(nn.Module):
    """F(x) = sum(w * x) + b for class 0 and its negative for class 1; ``w`` channels last (H, W, C)."""

    def __init__(self, w: np.ndarray, b: float):
        super().__init__()
        self.w = nn.Parameter(torch.from_numpy(np.ascontiguousarray(w, np.float32)))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x):  # (N, C, H, W)
        z = (x.permute(0, 2, 3, 1) * self.w).sum(dim=(1, 2, 3)) + self.b
        return torch.stack([z, -z], dim=1)


def additive_model(c: np.ndarray) -> nn.Module:
    return Additive(c).eval()


def linear_model(w: np.ndarray, b: float) -> nn.Module:
    return Linear(w, b).eval()


def normal_inputs(n: int, rows: int, cols: int | None = None, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Standard-normal model input (N, H, W, C): negative values, so never taken for a photo."""
    cols = rows if cols is None else cols
    return np.random.default_rng(seed).standard_normal((n, rows, cols, channels)).astype(np.float32)


def rise_blur(image_hwc: np.ndarray) -> np.ndarray:
    """RISE's insertion substrate, transcribed from eclique/RISE evaluation.py: ``gkern(11, 5)`` (a delta in
    an 11 x 11 array smoothed by scipy's gaussian_filter, sigma 5) applied per channel by
    ``nn.functional.conv2d(x, kern, padding=klen // 2)``, i.e. with zero padding."""
    klen, nsig = 11, 5
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = gaussian_filter(inp, nsig)
    channels = image_hwc.shape[-1]
    kern = np.zeros((channels, channels, klen, klen))
    for c in range(channels):
        kern[c, c] = k
    x = torch.from_numpy(np.ascontiguousarray(image_hwc.transpose(2, 0, 1)[None], np.float32))
    out = nn.functional.conv2d(x, torch.from_numpy(kern.astype("float32")), padding=klen // 2)
    return out[0].permute(1, 2, 0).numpy()


def rise_auc(curve: np.ndarray) -> float:
    """RISE's ``auc(arr)``: (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)."""
    return float((curve.sum() - curve[0] / 2 - curve[-1] / 2) / (curve.shape[0] - 1))


def snapshot(net: nn.Module) -> dict:
    """Everything of a model a call could change: values (bit for bit), modes, flags, gradients, hooks."""
    return {
        "training": [m.training for m in net.modules()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "state": {k: v.clone() for k, v in net.state_dict().items()},
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(m._backward_pre_hooks)) for m in net.modules()],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        a, b = before["state"][key], after["state"][key]
        assert a.dtype == b.dtype and torch.equal(a.view(-1).view(torch.uint8) if a.is_floating_point() else a,
                                                  b.view(-1).view(torch.uint8) if b.is_floating_point() else b), key
