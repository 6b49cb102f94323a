"""Analytic = measured on every layer of the seed CNN and on a zoo of architectures; dead units; ERF."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

import gradsight
from gradsight.errors import UnsupportedGeometryError
from gradsight.receptive.measured import FieldCheck


def disagreements(checks: list[FieldCheck]) -> list[FieldCheck]:
    return [c for c in checks if not c.agree]


@pytest.mark.parametrize("name", ["seed-cnn", "seed-cnn-torch"])
def test_every_module_of_the_seed_cnn_agrees(name):
    checks = gradsight.compare_fields(name, depth=None, units=("centre", "corner", "far-corner"))
    # conv and relu of each block, and the block itself (padding layers are left out: their borders are constants)
    assert len({c.layer for c in checks}) == 6 * 2 + 6
    assert not disagreements(checks)


def test_seed_cnn_agrees_with_the_real_model_too_where_units_are_alive():
    checks = gradsight.compare_fields("seed-cnn", mode="union", samples=8, units=("centre",))
    alive = [c for c in checks if not c.dead]
    assert len(alive) >= 5 and not disagreements(alive)


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


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_analytic_equals_measured(name):
    factory, size, depth = ZOO[name]
    torch.manual_seed(0)
    checks = gradsight.compare_fields(factory().eval(), size, depth=depth)
    assert len(checks) >= 6
    assert not disagreements(checks), disagreements(checks)[:3]
    # the centre units of the shallow layers have fields smaller than the input: not clipped on either side
    layers = gradsight.receptive_field(factory(), size).rows(depth)
    assert any(not layer.is_global and layer.size and max(layer.size) < min(size) for layer in layers)


def test_dead_unit_is_reported_as_dead():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # every unit off for inputs in [0, 1)
    _, check = gradsight.measure_field(net, "1", (4, 4), input_size=(16, 16), mode="union")
    assert check.dead and not check.agree
    _, check = gradsight.measure_field(net, "1", (4, 4), input_size=(16, 16), mode="linear")
    assert check.measured == check.analytic == ((4, 6), (4, 6))


def test_effective_receptive_field_lies_inside_the_analytic_one():
    erf = gradsight.effective_receptive_field("seed-cnn-torch", "L6", samples=8)
    field = gradsight.receptive_field("seed-cnn-torch")["L6"]
    assert erf.mass.sum() == pytest.approx(1.0)
    (r0, r1), (c0, c1) = field.rect(erf.unit)
    outside = erf.mass.copy()
    outside[r0:r1 + 1, c0:c1 + 1] = 0
    assert outside.sum() == 0
    assert erf.centre == (8 * 8 - 16 + 16, 8 * 8 - 16 + 16)  # u*S - P + (r - 1)/2
    half, most, everything = erf.radius(0.5), erf.radius(0.9), erf.radius(1.0)
    assert 0 < half < most < everything <= np.hypot(16, 16)


def test_measure_field_works_where_the_trace_refuses():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3)).eval()
    with pytest.raises(UnsupportedGeometryError, match="measure_field"):
        gradsight.receptive_field(net, (16, 16))
    values, check = gradsight.measure_field(net, "2", (10, 10), input_size=(16, 16), mode="union")
    # conv 3x3 on the upsampled grid reads rows 10..12 there, i.e. source rows 5..6, which the first 3x3
    # convolution (padding 1) computes from input rows 4..7
    assert check.analytic is None and check.measured == ((4, 7), (4, 7)) and not check.agree
    assert values.shape == (16, 16)
