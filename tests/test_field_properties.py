"""Property-based tests (Hypothesis) on random chains and small branching graphs of convolutions and pools.

For any kernel, stride, padding, dilation, ceil mode and input size: the analytic field equals the field
measured from gradients (pass-through mode), a unit's cropped gradient equals its whole-input gradient, and the
field cache never serves a model that was changed after it was traced. Derandomized: CI sees the same cases.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from unittest import mock

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import gradsight
from gradsight.receptive import cone

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@dataclass(frozen=True)
class Layer:
    kind: str  # "conv", "max" or "avg"
    kernel: int
    stride: int
    padding: int
    dilation: int = 1
    ceil: bool = False

    def out(self, n: int) -> int:
        """Output length for input length n (PyTorch's formula, with its ceil-mode rule)."""
        reach = self.dilation * (self.kernel - 1) + 1
        span = n + 2 * self.padding - reach
        if span < 0:
            return 0
        if not self.ceil:
            return span // self.stride + 1
        length = -(-span // self.stride) + 1
        if (length - 1) * self.stride >= n + self.padding:  # the last window may not start in the padding
            length -= 1
        return length

    def build(self, channels: int) -> nn.Module:
        if self.kind == "conv":
            return nn.Conv2d(channels, channels, self.kernel, self.stride, self.padding, self.dilation)
        if self.kind == "max":
            return nn.MaxPool2d(self.kernel, self.stride, self.padding, self.dilation, ceil_mode=self.ceil)
        return nn.AvgPool2d(self.kernel, self.stride, self.padding, ceil_mode=self.ceil)


@st.composite
def layers(draw) -> Layer:
    kind = draw(st.sampled_from(["conv", "conv", "max", "avg"]))
    kernel = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2)) if kind != "avg" else 1
    reach = dilation * (kernel - 1) + 1
    padding = draw(st.integers(0, reach // 2 if kind == "conv" else kernel // 2))  # PyTorch's limits for pools
    # ceil mode only for pools; the pass-through stand-in for a dilated max-pool has no ceil mode
    ceil = kind != "conv" and dilation == 1 and draw(st.booleans())
    return Layer(kind, kernel, stride, padding, dilation, ceil)


@dataclass(frozen=True)
class Branch:
    """Two paths from one tensor, merged by addition or concatenation (their outputs must have one size)."""

    a: tuple[Layer, ...]
    b: tuple[Layer, ...]
    merge: str

    def out(self, n: int) -> int:
        sizes = {_through(self.a, n), _through(self.b, n)}
        return sizes.pop() if len(sizes) == 1 else 0


def _through(parts, n: int) -> int:
    for part in parts:
        n = part.out(n) if n > 0 else 0
    return n


class _Merge(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module, merge: str, channels: int):
        super().__init__()
        self.a, self.b, self.merge = a, b, merge
        if merge == "cat":  # back to `channels` channels, each mixing both paths
            self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x):
        y, z = self.a(x), self.b(x)
        return y + z if self.merge == "add" else self.fuse(torch.cat([y, z], dim=1))


def build(parts, channels: int = 2) -> nn.Module:
    modules = []
    for part in parts:
        if isinstance(part, Layer):
            modules += [part.build(channels), nn.ReLU()]
        else:
            a = nn.Sequential(*[layer.build(channels) for layer in part.a])
            b = nn.Sequential(*[layer.build(channels) for layer in part.b])
            modules.append(_Merge(a, b, part.merge, channels))
    torch.manual_seed(0)
    net = nn.Sequential(*modules).eval()
    with torch.no_grad():  # weights bounded away from zero: a measured support has no holes by accident
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(module.weight.sign() * (0.5 + module.weight.abs()))
    return net


@st.composite
def branches(draw) -> Branch:
    a = tuple(draw(st.lists(layers(), min_size=1, max_size=2)))
    b = tuple(draw(st.lists(layers(), min_size=0, max_size=2)))
    return Branch(a, b, draw(st.sampled_from(["add", "cat"])))


@st.composite
def networks(draw):
    """(parts, rows, cols): a chain of 1..3 layers or branches whose output is at least 1 x 1."""
    parts = tuple(draw(st.lists(st.one_of(layers(), layers(), branches()), min_size=1, max_size=3)))
    # at least the largest kernel extent (7): gradsight refuses inputs smaller than the first kernel
    rows, cols = draw(st.integers(7, 28)), draw(st.integers(7, 28))
    draw(st.just(None).filter(lambda _: _through(parts, rows) > 0 and _through(parts, cols) > 0))
    return parts, rows, cols


def _all_layers(parts):
    for part in parts:
        yield from (part,) if isinstance(part, Layer) else (*part.a, *part.b)


def _has_holes(parts) -> bool:
    """Whether some unit's field has pixels inside its rectangle that no path reads: a dilated kernel skips
    pixels, and a kernel shorter than its stride leaves gaps between neighbouring units' fields."""
    return any((layer.dilation > 1 and layer.kernel > 1) or layer.kernel < layer.stride
               for layer in _all_layers(parts))


def _clipped(field, unit) -> bool:
    """Whether the unit's rectangle was cut at the image border or at what the layer's units can read."""
    whole = tuple((min(c.span(u)[0] for c in comps), max(c.span(u)[1] for c in comps))
                  for comps, u in zip(field.field.axes, unit))
    return field.rect(unit) != whole


def _inside(inner, outer) -> bool:
    return all(o0 <= i0 and i1 <= o1 for (i0, i1), (o0, o1) in zip(inner, outer))


@SETTINGS
@given(networks())
def test_analytic_field_equals_measured_field(case):
    parts, rows, cols = case
    net = build(parts)
    checks = gradsight.compare_fields(net, (rows, cols), depth=None, units=("centre", "corner", "far-corner"),
                                      mode="linear", samples=1)
    report = gradsight.receptive_field(net, (rows, cols))
    assert checks
    for check in checks:
        if check.sees_nothing:
            assert check.measured is None, check
            continue
        # the rectangle is exact, and an outer bound where clipping cuts through a hole (GUIDE: holes)
        assert check.measured is not None and _inside(check.measured, check.analytic), check
        if not _has_holes(parts) or not _clipped(report[check.layer], check.unit):
            assert check.measured == check.analytic, check


@SETTINGS
@given(networks(), st.data())
def test_cropped_node_gradient_equals_the_whole_input_gradient(case, data):
    parts, rows, cols = case
    net = build(parts)
    report = gradsight.receptive_field(net, (rows, cols))
    fields = [f for f in report.layers if len(f.spatial_shape) == 2 and f.name != "(model)"]
    field = data.draw(st.sampled_from(fields))
    r, c = field.spatial_shape
    unit = (data.draw(st.integers(0, r - 1)), data.draw(st.integers(0, c - 1)), data.draw(st.integers(0, 1)))
    x = np.random.default_rng(0).standard_normal((rows, cols, 2)).astype(np.float32)
    full = gradsight.node_gradient(net, field.name, unit, x, crop=False)
    with mock.patch.object(cone, "MIN_CROPPED_VALUES", 0):  # take every crop, however small
        cropped = gradsight.node_gradient(net, field.name, unit, x)
    scale = max(float(np.abs(full.gradient).max()), 1e-30)
    np.testing.assert_allclose(cropped.gradient, full.gradient, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(cropped.values, full.values, rtol=1e-5, atol=1e-6)


def _swap(parts, index: int, new: Layer):
    parts = list(parts)
    parts[index] = new
    return tuple(parts)


def _signature(report) -> list:
    return [(f.name, f.kind, f.output_shape, f.field, f.geometry) for f in report.layers]


def _report_or_error(net, size):
    try:
        return _signature(gradsight.receptive_field(net, size))
    except gradsight.BadInputError as err:
        return type(err)


@SETTINGS
@given(networks(), st.data())
def test_the_field_cache_never_serves_a_changed_model(case, data):
    parts, rows, cols = case
    net = build(parts)
    gradsight.receptive_field(net, (rows, cols))  # cached now
    chains = [i for i, p in enumerate(parts) if isinstance(p, Layer)]
    if chains and data.draw(st.booleans()):  # change an attribute of a module in place
        i = data.draw(st.sampled_from(chains))
        names = ["stride", "padding"] + (["dilation"] if parts[i].kind != "avg" else [])
        attribute, value = data.draw(st.sampled_from(names)), data.draw(st.integers(1, 2))
        # Conv2d keeps pairs, the pools what they were given; an invalid change fails for both models alike
        setattr(net[_index(parts, i)], attribute, (value, value) if parts[i].kind == "conv" else value)
        changed = _swap(parts, i, replace(parts[i], **{attribute: value}))
    else:  # swap a module for another one: same number of modules, another geometry
        i = data.draw(st.integers(0, len(parts) - 1))
        new = data.draw(layers())
        changed = _swap(parts, i, new)
        _replace_part(net, parts, i, new)
    assert _report_or_error(net, (rows, cols)) == _report_or_error(build(changed), (rows, cols))


def _index(parts, i: int) -> int:
    """Position in the Sequential of part i: a Layer is a module and its ReLU, a Branch one module."""
    return sum(2 if isinstance(p, Layer) else 1 for p in parts[:i])


def _replace_part(net: nn.Sequential, parts, i: int, new: Layer) -> None:
    start = _index(parts, i)
    if isinstance(parts[i], Layer):
        net[start] = new.build(2)
    else:  # a branch becomes a layer: its module is replaced by the layer's, followed by a ReLU as in build
        tail = list(net)[start + 1:]
        del net[start:]
        for module in [new.build(2), nn.ReLU(), *tail]:
            net.append(module)
