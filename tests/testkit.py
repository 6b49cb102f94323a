"""Helpers shared by several test files (models built in tests, synthetic folders, tolerances).

Test files import from here, never from each other or from conftest: ``from testkit import small_cnn``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision
from PIL import Image
from torch import nn

import gradsight
from gradsight.models.spec import LoadedModel, ModelSpec
from gradsight.preprocess import Preprocess


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



TINY_PREP = Preprocess(resize=48, crop=40, mean=(0.5,) * 3, std=(0.25,) * 3)
# float16 keeps 11 significant bits: rounding moves a value by at most 2**-11 of itself; one more ulp (2**-10)
# covers a float32 difference in the last bit between a batch and a single image that flips a rounding.
# Below 2**-14 float16 is subnormal, with steps of 2**-24.
F16_RTOL, F16_ATOL = 2.0 ** -10, 2.0 ** -24


def tiny_model() -> LoadedModel:
    return LoadedModel(small_cnn(), ModelSpec("tiny-cnn", "torch", TINY_PREP))


def make_folder(root: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` small images made from the bundled photo (crops, flips, colour shifts, greyscale, JPEG) in
    nested folders, plus a corrupt JPEG, a folder named like an image, a symlink, a hidden file and a text
    file. Returns the relative paths that should be computed."""
    photo = Image.open(gradsight.example_image_path()).convert("RGB")
    rng = np.random.default_rng(seed)
    good = []
    for i in range(count):
        side = int(rng.integers(100, 340))
        left, top = int(rng.integers(0, 500 - side)), int(rng.integers(0, 348 - side))
        image = photo.crop((left, top, left + side, top + side)).resize(
            (int(rng.integers(48, 97)), int(rng.integers(48, 97))))
        if i % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # a colour shift that never clips: flat saturated patches would make exact max-pool ties, where the
        # gradient's route depends on float rounding (batch vs single image), not on the runner
        scale = rng.uniform(0.7, 0.9, size=3)
        pixels = np.asarray(image, dtype=np.float64) * scale + rng.uniform(0, 1, size=3) * 255 * (1 - scale)
        image = Image.fromarray(np.rint(pixels).astype(np.uint8))
        folder = ("", "a/", "a/b/")[i % 3]
        (root / folder).mkdir(parents=True, exist_ok=True)
        if i % 7 == 3:
            image, name = image.convert("L"), f"{folder}grey{i:03d}.png"
        elif i % 5 == 1:
            name = f"{folder}img{i:03d}.jpg"
        else:
            name = f"{folder}img{i:03d}.png"
        image.save(root / name)
        good.append(name)
    jpeg = (root / good[1]).read_bytes() if good[1].endswith(".jpg") else None
    (root / "corrupt.jpg").write_bytes((jpeg or b"\xff\xd8\xff\xe0")[:300])
    (root / "folder.png").mkdir()  # a directory named like an image
    photo.resize((64, 48)).save(root / "folder.png" / "inner.png")
    good.append("folder.png/inner.png")
    os.symlink(good[0], root / "link.png")  # relative, so that a copied folder keeps a working link
    good.append("link.png")
    photo.resize((40, 40)).save(root / ".hidden.png")
    (root / "notes.txt").write_text("not an image")
    return sorted(good)


def dilated_context_net() -> nn.Module:
    # Yu & Koltun's context module: 3x3 convs with dilations 1, 1, 2, 4, 8, then max-pool with dilation 2
    layers, channels = [], 1
    for d in (1, 1, 2, 4, 8):
        layers += [nn.Conv2d(channels, 4, 3, padding=d, dilation=d), nn.ReLU()]
        channels = 4
    layers += [nn.MaxPool2d(3, stride=2, padding=1, dilation=2)]
    torch.manual_seed(0)
    return nn.Sequential(*layers).eval()


ZOO = {
    "resnet18 (residual)": (lambda: torchvision.models.resnet18(), (224, 224), 2),
    "vgg11 features": (lambda: torchvision.models.vgg11().features, (160, 160), 1),
    "alexnet": (lambda: torchvision.models.alexnet(), (224, 224), 2),
    "mobilenet_v2 (depthwise, residual)": (lambda: torchvision.models.mobilenet_v2(), (160, 160), 2),
    "timm tf_efficientnet_lite0 (TF same padding)": (lambda: timm.create_model("tf_efficientnet_lite0"),
                                                     (160, 160), 2),
    "dilated context module": (dilated_context_net, (96, 96), 1),
    # unpadded stride-2 layers and ceil-mode pools leave trailing rows that no unit reads
    "squeezenet1_1 (ceil-mode pools)": (lambda: torchvision.models.squeezenet1_1(), (128, 128), 2),
    "inception_v3 (unpadded strided convolutions)": (
        lambda: torchvision.models.inception_v3(init_weights=True, aux_logits=False), (160, 160), 1),
    # nn.Linear on channels-last maps folds positions into matrix rows and back (view, addmm, view)
    "convnext_tiny (LayerNorm, Linear on channels-last)": (lambda: torchvision.models.convnext_tiny(), (96, 96), 2),
}
