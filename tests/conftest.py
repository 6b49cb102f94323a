"""Shared fixtures: the embedded model (loaded once), small CNNs, and photos made on the fly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo  # noqa: F401  before TensorFlow: see gradsight.adapters.avoid_triton_tensorflow_clash
from torch import nn

import gradsight


@pytest.fixture(scope="session")
def embedded():
    """The embedded EfficientNet-Lite0 (real ImageNet weights, offline)."""
    return gradsight.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def ouzel_path():
    return gradsight.example_image_path()


def small_cnn(seed: int = 0, classes: int = 5) -> nn.Module:
    """A conv-BN-ReLU classifier with non-trivial BatchNorm statistics (so folding really changes weights)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
    )
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture
def cnn():
    return small_cnn()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Tests never touch the network: any connection to a non-loopback address fails loudly."""
    import socket

    original = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or "/" in host):
            raise RuntimeError(f"test tried to reach the network: {address!r}")
        return original(self, address)

    socket.socket.connect = guarded
    yield
    socket.socket.connect = original
