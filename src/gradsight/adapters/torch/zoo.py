"""Small ready-made PyTorch models: the seed CNN of the exercise, in both padding conventions.

Example:
    >>> net = seed_cnn("same")          # TF/Keras padding='same': the extra pixel goes bottom/right
    >>> [name for name, _ in net.named_children()]
    ['L1', 'L2', 'L3', 'L4', 'L5', 'L6', 'head']
    >>> net(torch.rand(2, 1, 128, 128)).sum(dim=1).round().tolist()   # probabilities of ten classes
    [1.0, 1.0]
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import BadInputError
from ...models.names import SEED_CHANNELS, SEED_INPUT, SEED_KERNELS, SEED_STRIDES
from ..common import avoid_triton_tensorflow_clash
from .same_padding import same_total

avoid_triton_tensorflow_clash("torch")  # before torch runs anything that imports Triton

PADDINGS = ("same", "torch")


class TFSamePad2d(nn.Module):
    """TensorFlow's padding='same': output = ceil(input / stride); odd totals put the extra pixel bottom/right."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad wants the last axis first
            total = same_total(size, self.kernel, self.stride)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}"


def seed_cnn(padding: str = "same", seed: int = 0, classes: int = 10) -> nn.Module:
    """The exercise's CNN: 1-channel input, L1..L6 = conv + ReLU, then global average pool, dense, softmax.

    ``padding="same"`` pads like Keras ``padding='same'``; ``padding="torch"`` uses PyTorch's symmetric k//2.
    Weights follow Keras' defaults, as in the exercise: Glorot-uniform kernels drawn under ``seed``, zero biases
    (the global RNG is left alone).
    """
    if padding not in PADDINGS:
        raise BadInputError("padding", expected=f"one of {PADDINGS}", got=repr(padding))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        channels_in = SEED_INPUT[0]
        for i, (k, s, c) in enumerate(zip(SEED_KERNELS, SEED_STRIDES, SEED_CHANNELS), start=1):
            parts: OrderedDict[str, nn.Module] = OrderedDict()
            if padding == "same":
                parts["pad"] = TFSamePad2d(k, s)
            parts["conv"] = nn.Conv2d(channels_in, c, k, s, padding=0 if padding == "same" else k // 2)
            parts["relu"] = nn.ReLU()
            blocks[f"L{i}"] = nn.Sequential(parts)
            channels_in = c
        blocks["head"] = nn.Sequential(OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), dense=nn.Linear(channels_in, classes),
            softmax=nn.Softmax(dim=1)))
        net = nn.Sequential(blocks).eval()
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight, generator=generator)
            nn.init.zeros_(module.bias)
    net.gradsight_input_shape = SEED_INPUT  # (channels, rows, cols) it is meant for
    return net
