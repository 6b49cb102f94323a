"""Shared fixtures: the embedded model (loaded once), small CNNs, and photos made on the fly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo  # noqa: F401  before TensorFlow: see gradsight.adapters.avoid_triton_tensorflow_clash
from testkit import small_cnn

import gradsight


@pytest.fixture(scope="session")
def embedded():
    """The embedded EfficientNet-Lite0 (real ImageNet weights, offline)."""
    return gradsight.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def ouzel_path():
    return gradsight.example_image_path()


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
