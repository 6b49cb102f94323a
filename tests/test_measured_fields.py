"""Analytic = measured on every layer of the seed CNN and on a zoo of architectures; dead units; ERF."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import ZOO
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
