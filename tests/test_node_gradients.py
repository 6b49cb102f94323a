"""Inner-node gradients: equal to Captum's NeuronGradient, equal with and without the partial/cropped run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import NeuronGradient
from torch import nn

import gradsight
from gradsight.adapters.torch.zoo import seed_cnn
from gradsight.errors import UnsupportedGeometryError
from gradsight.receptive import cone
from gradsight.receptive.cone import crop_window


def captum_unit_gradient(net, layer_module, x_hwc: np.ndarray, unit) -> np.ndarray:
    x = torch.from_numpy(x_hwc).permute(2, 0, 1)[None].clone()
    row, col, channel = unit
    attr = NeuronGradient(net, layer_module).attribute(x, neuron_selector=(channel, row, col))
    return attr[0].permute(1, 2, 0).detach().numpy()


@pytest.mark.parametrize("padding", ["same", "torch"])
@pytest.mark.parametrize("unit", [(0, 0, 0), (8, 8, 3), (15, 15, 5), (3, 12, 1)])
def test_equals_captum_neuron_gradient_on_seed_cnn(padding, unit):
    net = seed_cnn(padding)
    ours = gradsight.node_gradient(net, "L6", unit)
    ref = captum_unit_gradient(net, net.L6, ours.inputs, unit)
    np.testing.assert_allclose(ours.gradient, ref, rtol=1e-6, atol=1e-6 * max(np.abs(ref).max(), 1e-12))
    assert ours.cropped  # the 33x33 field is much smaller than the 128x128 input


def test_exercise_unit_is_alive_and_sees_the_analytic_corner():
    for name, last in (("seed-cnn", 23), ("seed-cnn-torch", 16)):
        g = gradsight.node_gradient(name, "L6", (0, 0, 0))
        assert g.values[0] > 0, "the exercise's unit (0, 0, 0) of L6 is alive on the default input"
        assert g.rect == ((0, last), (0, last)) == g.support_box()


def test_crop_and_partial_model_equal_the_full_computation_on_resnet():
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    x = np.random.default_rng(3).random((160, 160, 3), dtype=np.float32)
    for unit in [(0, 0, 5), (10, 10, 7), (19, 4, 0)]:
        cropped = gradsight.node_gradient(net, "layer1", unit, x)
        full = gradsight.node_gradient(net, "layer1", unit, x, crop=False)
        assert cropped.cropped and not full.cropped
        np.testing.assert_allclose(cropped.gradient, full.gradient, rtol=1e-5,
                                   atol=1e-6 * np.abs(full.gradient).max())
        ref = captum_unit_gradient(net, net.layer1, x, unit)
        # the default path folds BatchNorm (float32 rounding differs); the plain path is Captum's arithmetic
        np.testing.assert_allclose(full.gradient, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
        plain = gradsight.node_gradient(net, "layer1", unit, x, crop=False, fast=False)
        np.testing.assert_allclose(plain.gradient, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_crop_window_keeps_grid_and_same_padding():
    report = gradsight.receptive_field("seed-cnn")
    layer = report["L6"]
    for unit in [(0, 0), (5, 9), (15, 15)]:
        window = crop_window(layer, unit)
        for (start, end), (first, last) in zip(window, layer.rect(unit)):
            assert start % 8 == 0 and start <= first and last < end <= 128
            assert (end - start) % 8 == 128 % 8


def test_batched_units_equal_single_units():
    units = [(0, 0, 0), (4, 7, 2), (15, 1, 9)]
    together = gradsight.node_gradients("seed-cnn", "L4", units)
    for i, unit in enumerate(units):
        alone = gradsight.node_gradient("seed-cnn", "L4", unit)
        np.testing.assert_allclose(together.gradients[i], alone.gradient, rtol=1e-5,
                                   atol=1e-5 * np.abs(alone.gradient).max())


@pytest.mark.parametrize("name", ["seed-cnn", "seed-cnn-torch"])
def test_batches_of_windows_equal_whole_input_runs(name):
    # every unit of a channel: windows of several sizes (border units are clipped), stacked per size
    cropped = gradsight.node_gradients(name, "L6", channel=3)
    full = gradsight.node_gradients(name, "L6", channel=3, crop=False)
    assert cropped.cropped and not full.cropped and (full.values > 0).sum() > 128  # mostly alive units
    np.testing.assert_allclose(cropped.gradients, full.gradients, rtol=1e-5,
                               atol=1e-6 * np.abs(full.gradients).max())
    np.testing.assert_allclose(cropped.values, full.values, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    x = np.random.default_rng(5).random((128, 128, 3), dtype=np.float32)
    units = [(0, 0, 1), (31, 31, 2), (16, 3, 3), (9, 27, 4)]
    cropped = gradsight.node_gradients(net, "layer1", units, inputs=x)
    for i, unit in enumerate(units):
        ref = captum_unit_gradient(net, net.layer1, x, unit)
        np.testing.assert_allclose(cropped.gradients[i], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_a_whole_channel():
    net = seed_cnn("same")
    result = gradsight.node_gradients(net, "L6", channel=2)
    assert len(result) == 16 * 16 and set(result.units[:, 2]) == {2}
    assert result.units[:, :2].tolist() == [[x, y] for x in range(16) for y in range(16)]
    # Each unit's gradient and value in the batched call equal the unit computed alone (corners, edge, centre).
    for k in (0, 15, 17, 8 * 16 + 8, 255):
        alone = gradsight.node_gradient(net, "L6", tuple(int(v) for v in result.units[k]))
        np.testing.assert_allclose(result.gradients[k], alone.gradient, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(result.values[k], alone.values[0], rtol=1e-5, atol=1e-7)
    # and each lies inside its own unit's analytic rectangle
    for k in range(0, 256, 37):
        box = result.support_box(k)
        (r0, r1), (c0, c1) = result.unit_rect(k)
        assert box is None or (r0 <= box[0][0] and box[0][1] <= r1 and c0 <= box[1][0] and box[1][1] <= c1)


def test_layer_by_name_index_or_module_agree():
    net = seed_cnn("same")
    by_name = gradsight.node_gradient(net, "L3", (4, 4, 1)).gradient
    by_index = gradsight.node_gradient(net, 2, (4, 4, 1)).gradient
    by_module = gradsight.node_gradient(net, net.L3, (4, 4, 1)).gradient
    assert np.array_equal(by_name, by_index) and np.array_equal(by_name, by_module)


def test_bad_layer_and_unit_are_clear_errors():
    with pytest.raises(gradsight.UnknownNameError) as info:
        gradsight.node_gradient("seed-cnn", "L7", (0, 0, 0))
    assert "L1" in str(info.value) or "L6" in str(info.value)
    with pytest.raises(gradsight.BadInputError, match=r"0\.\.15 x 0\.\.15"):
        gradsight.node_gradient("seed-cnn", "L6", (16, 0, 0))
    with pytest.raises(gradsight.BadInputError, match=r"0\.\.63"):
        gradsight.node_gradient("seed-cnn", "L6", (0, 0, 64))
    with pytest.raises(gradsight.BadInputError, match="layer index"):
        gradsight.node_gradient("seed-cnn", 12, (0, 0, 0))


def test_too_many_full_size_gradients_is_a_clear_error(monkeypatch):
    from gradsight.receptive import node_gradient as module

    # 256 units x 128 x 128 x 1 float32 = 16 MiB; with a 10 MiB budget that is too much, with 20 MiB it is not
    monkeypatch.setattr(module, "MAX_RESULT_BYTES", 10 * 2 ** 20)
    with pytest.raises(gradsight.BadInputError, match=r"at most 160 for a 128 x 128 x 1 input"):
        gradsight.node_gradients("seed-cnn", "L6", channel=0)
    monkeypatch.setattr(module, "MAX_RESULT_BYTES", 20 * 2 ** 20)
    assert len(gradsight.node_gradients("seed-cnn", "L6", channel=0)) == 256


def test_user_model_left_as_it_was():
    net = seed_cnn("torch").train()
    net.L2.conv.weight.grad = torch.ones_like(net.L2.conv.weight)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    hooks = [len(m._forward_hooks) for m in net.modules()]
    gradsight.node_gradient(net, "L5", (3, 3, 3))
    with pytest.raises(gradsight.BadInputError):
        gradsight.node_gradient(net, "L5", (99, 3, 3))
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(net.L2.conv.weight.grad, torch.ones_like(net.L2.conv.weight))
    assert hooks == [len(m._forward_hooks) for m in net.modules()]
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


# --- the cone: cropping the outputs of earlier layers as well as the input --------------------------------


def test_relative_field_inverts_composition():
    from gradsight.receptive.algebra import AxisField, chain_field

    layers = [(7, 2, 3), (3, 2, 1), (3, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (1, 1, 0)]
    for k in range(len(layers) + 1):
        earlier, whole = chain_field(layers[:k]), chain_field(layers)
        assert whole.after(earlier) == chain_field(layers[k:])
    # by hand: a 3x3/2 conv (padding 1) then a 3x3/1 conv (padding 1): S = 2 * 1, start = -1 - 1 * 2, and
    # end = 1 + 1 * 2; on the first conv's grid the second sees one unit either side
    assert AxisField(2, -3, 3).after(AxisField(2, -1, 1)) == AxisField(1, -1, 1)
    assert AxisField(2, -1, 2).after(AxisField(2, -1, 1)) is None  # 2 - 1 is odd: not a chain


class _TwoPaths(nn.Module):
    """a -> b, then c reads b's output plus a's: a is a cut for c, b is not (a's output skips over b)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = (nn.Conv2d(1 if i == 0 else 3, 3, 3, padding=1) for i in range(3))

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(y)) + y)


def test_cuts_follow_every_path():
    report = gradsight.receptive_field(torchvision.models.resnet18(), (96, 96))
    assert report.is_cut(report["layer1.0"], report["layer2"])
    assert report.is_cut(report["layer1.0.conv1"], report["layer1.0.conv2"])
    assert not report.is_cut(report["layer1.0.conv1"], report["layer1.0"])  # the identity path skips it
    assert not report.is_cut(report["layer1.0.relu"], report["layer2"])  # shared ReLU: runs several times
    assert not report.is_cut(report["layer2"], report["layer1"])  # later, not earlier
    net = _TwoPaths().eval()
    report = gradsight.receptive_field(net, (40, 40))
    assert report.is_cut(report["a"], report["c"]) and not report.is_cut(report["b"], report["c"])
    x = np.random.default_rng(0).random((40, 40, 1), dtype=np.float32)
    for unit in [(20, 20, 1), (0, 39, 2)]:
        ours = gradsight.node_gradient(net, "c", unit, x)
        ref = captum_unit_gradient(net, net.c, x, unit)
        np.testing.assert_allclose(ours.gradient, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


class _FixedPositions(nn.Module):
    """Adds a learned full-size map after the first convolution: not translation-equivariant, so windows
    cannot be used (the sizes no longer match) and gradsight must run the whole input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.where = nn.Parameter(torch.randn(1, 2, 48, 48))

    def forward(self, x):
        return self.b(torch.relu(self.a(x) + self.where))


def test_models_that_need_full_size_maps_fall_back_to_the_whole_input():
    net = _FixedPositions().eval()
    x = np.random.default_rng(1).random((48, 48, 1), dtype=np.float32)
    for unit in [(24, 24, 0), (0, 47, 1)]:
        ours = gradsight.node_gradient(net, "b", unit, x)
        assert not ours.cropped
        ref = captum_unit_gradient(net, net.b, x, unit)
        np.testing.assert_allclose(ours.gradient, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    many = gradsight.node_gradients(net, "b", [(5, 5, 0), (40, 9, 1)], inputs=x)
    np.testing.assert_allclose(many.gradients[1], captum_unit_gradient(net, net.b, x, (40, 9, 1)), rtol=1e-6,
                               atol=1e-7)


class _CoordConv(nn.Module):
    """CoordConv (Liu et al. 2018): row and column coordinates in [-1, 1] are concatenated to the input, so
    a window would see other coordinates: gradsight must notice and run the whole input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.gradsight_input_shape = (1, 40, 40)  # one grey channel; the first convolution also gets two more

    def forward(self, x):
        n, _, h, w = x.shape
        rows = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(n, 1, h, w)
        cols = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
        return self.b(torch.relu(self.a(torch.cat([x, rows, cols], dim=1))))


def test_coordinates_mixed_in_turn_windows_off():
    net = _CoordConv().eval()
    report = gradsight.receptive_field(net, (40, 40))
    assert report["b"].size == (5, 5)  # the field itself is unchanged
    assert not report.translation_equivariant(report["b"])
    x = np.random.default_rng(2).random((40, 40, 1), dtype=np.float32)
    with torch.no_grad():
        z = net(torch.from_numpy(x).permute(2, 0, 1)[None])
    for unit in [(20, 20, 0), (39, 3, 1)]:
        ours = gradsight.node_gradient(net, "b", unit, x)
        assert not ours.cropped
        assert ours.values[0] == pytest.approx(float(z[0, unit[2], unit[0], unit[1]]), rel=1e-6)
        ref = captum_unit_gradient(net, net.b, x, unit)
        np.testing.assert_allclose(ours.gradient, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    assert not gradsight.node_gradients(net, "b", [(5, 5, 0), (30, 9, 1)], inputs=x).cropped
    # and a model without such maps stays translation-equivariant
    plain = gradsight.receptive_field(seed_cnn("same"))
    assert all(plain.translation_equivariant(layer) for layer in plain.layers)


def _arriving_shapes(module: nn.Module, call):
    """Spatial shapes of what reaches ``module`` while ``call`` runs (a user hook: gradsight then runs the
    user's own model, so the hook sees the cropped tensors)."""
    seen = []
    handle = module.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape[2:])))
    try:
        call()
    finally:
        handle.remove()
    return seen


def test_the_unit_layer_runs_on_its_cone_only(monkeypatch):
    net = seed_cnn("same")
    gradsight.receptive_field(net)  # traced once, before the hook below starts counting
    # by default small crops are skipped (they cost more than they save); with every crop taken, the last
    # convolution of L6 (3x3, stride 2) gets the 3 x 3 of L5 one unit needs (the whole L5 is 32 x 32)
    monkeypatch.setattr(cone, "MIN_CROPPED_VALUES", 0)
    seen = _arriving_shapes(net.L6.conv, lambda: gradsight.node_gradient(net, "L6", (8, 8, 0)))
    assert seen == [(3, 3)]
    g = gradsight.node_gradient(net, "L6", (8, 8, 0))
    ref = captum_unit_gradient(net, net.L6, g.inputs, (8, 8, 0))
    np.testing.assert_allclose(g.gradient, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18().eval()
    x = np.random.default_rng(2).random((224, 224, 3), dtype=np.float32)
    report = gradsight.receptive_field(resnet, (224, 224))
    gradsight.node_gradient(resnet, "layer3", (7, 7, 3), x)  # traces the fields at this input size
    # the centre unit of layer3 sees more than the input (field 211 + borders), yet layer3.1 needs only its
    # field on layer3.0's grid: (r_L - r_b) / S_b + 1 units per axis
    layer, block = report["layer3"], report["layer3.0"]
    need = (layer.size[0] - block.size[0]) // block.stride[0] + 1
    seen = _arriving_shapes(resnet.layer3[1], lambda: gradsight.node_gradient(resnet, "layer3", (7, 7, 3), x))
    assert seen == [(need, need)] and need < 14
    full = gradsight.node_gradient(resnet, "layer3", (7, 7, 3), x, crop=False)
    every_crop = gradsight.node_gradient(resnet, "layer3", (7, 7, 3), x)
    monkeypatch.undo()
    default = gradsight.node_gradient(resnet, "layer3", (7, 7, 3), x)
    assert every_crop.cropped and default.cropped and not full.cropped
    for g in (every_crop, default):
        np.testing.assert_allclose(g.gradient, full.gradient, rtol=1e-5, atol=1e-5 * np.abs(full.gradient).max())


def _autograd_unit(net: nn.Module, layer: str, x_hwc: np.ndarray, index) -> tuple[float, np.ndarray]:
    """Plain autograd on the whole input: z[index] of the layer's output (batch index 0 prepended)."""
    x = torch.from_numpy(x_hwc).permute(2, 0, 1)[None].clone().requires_grad_(True)
    seen = []
    handle = net.get_submodule(layer).register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        net(x)
    finally:
        handle.remove()
    z = seen[0][(0, *index)]
    (grad,) = torch.autograd.grad(z, x)
    return float(z.detach()), grad[0].permute(1, 2, 0).numpy()


def test_channels_last_layers_take_units_as_row_column_channel(monkeypatch):
    import timm

    # timm ConvNeXt with conv_mlp=False runs its MLP as nn.Linear on N x H x W x C maps
    torch.manual_seed(0)
    net = timm.create_model("convnext_atto", pretrained=False, conv_mlp=False).eval()
    layer = "stages.0.blocks.0.mlp.fc1"
    x = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
    field = gradsight.receptive_field(net, (64, 64))[layer]
    assert field.spatial_shape == (16, 16) and field.channels == 160  # 64 / 4 (the stem), 4 x 40 features
    for unit in [(2, 9, 11), (5, 7, 3), (15, 0, 159)]:
        value, ref = _autograd_unit(net, layer, x, unit)  # z[0, row, col, channel]
        for crop in (True, False):
            g = gradsight.node_gradient(net, layer, unit, x, crop=crop)
            assert g.values[0] == pytest.approx(value, rel=1e-5, abs=1e-6), (unit, crop)
            np.testing.assert_allclose(g.gradient, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
            assert g.rect == g.support_box(), (unit, crop)
        # the stem (4x4/4) then a 7x7 depthwise convolution (padding 3) at stride 4: rows 4u - 12 .. 4u + 15
        assert g.rect[0] == (max(4 * unit[0] - 12, 0), min(4 * unit[0] + 15, 63))
    monkeypatch.setattr(cone, "MIN_CROPPED_VALUES", 0)  # crops of channels-last outputs inside the block too
    g = gradsight.node_gradient(net, layer, (5, 7, 3), x)
    np.testing.assert_allclose(g.gradient, _autograd_unit(net, layer, x, (5, 7, 3))[1], rtol=1e-5, atol=1e-7)
    with pytest.raises(gradsight.BadInputError, match=r"0\.\.15 x 0\.\.15"):
        gradsight.node_gradient(net, layer, (16, 0, 0), x)
    with pytest.raises(gradsight.BadInputError, match=r"0\.\.159"):
        gradsight.node_gradient(net, layer, (0, 0, 160), x)
    many = gradsight.node_gradients(net, layer, [(2, 9, 11), (15, 0, 159)], inputs=x)
    np.testing.assert_allclose(many.gradients[1], _autograd_unit(net, layer, x, (15, 0, 159))[1], rtol=1e-5,
                               atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18 (residual)", "mobilenet_v2 (depthwise, residual)",
                                  "timm tf_efficientnet_lite0 (TF same padding)", "dilated context module",
                                  "vgg11 features", "convnext_tiny (LayerNorm, Linear on channels-last)",
                                  "squeezenet1_1 (ceil-mode pools)", "inception_v3 (unpadded strided convolutions)"])
def test_cone_crops_equal_the_full_computation_on_the_zoo(name, monkeypatch):
    from testkit import ZOO

    monkeypatch.setattr(cone, "MIN_CROPPED_VALUES", 0)  # take every crop, however small

    factory, size, _ = ZOO[name]
    torch.manual_seed(0)
    # float64: a crop runs convolutions of other shapes, whose float32 rounding differs by ~1e-5 in deep
    # random networks on some CPUs; in float64 any difference left is the cropping's, not the arithmetic's
    net = factory().double().eval()
    x = np.random.default_rng(4).random((*size, 3 if name != "dilated context module" else 1), dtype=np.float32)
    report = gradsight.receptive_field(net, size)
    layers = [f for f in report.rows(3) if not f.is_global and f.spatial_shape and f.size][3::4]
    assert len(layers) >= 3
    deeper_crops = 0
    for field in layers:
        rows, cols = field.spatial_shape
        for unit in [(rows // 2, cols // 2, 0), (0, cols - 1, 1)]:
            plan = cone.crop_plan(report, field, unit[:2])
            deeper_crops += plan is not None and len(plan.steps) > 1
            cropped = gradsight.node_gradient(net, field.name, unit, x)
            full = gradsight.node_gradient(net, field.name, unit, x, crop=False)
            scale = max(np.abs(full.gradient).max(), 1e-30)
            np.testing.assert_allclose(cropped.gradient, full.gradient, rtol=1e-5, atol=2e-5 * scale,
                                       err_msg=f"{field.name} {unit}")
            np.testing.assert_allclose(cropped.values, full.values, rtol=1e-5, atol=1e-6)
    assert deeper_crops >= 2  # crops of intermediate outputs were exercised, not only the input crop


# --- without an analytic field: crop=False needs none, and layers before a refused operation keep theirs --


def _reflecting() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.ReflectionPad2d(2), nn.Conv2d(1, 2, 5), nn.ReLU(),
                         nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")).eval()


def test_crop_false_needs_no_field_for_reflect_padding():
    net = _reflecting()
    x = np.random.default_rng(0).random((24, 24, 1), dtype=np.float32)
    with pytest.raises(UnsupportedGeometryError, match=r"crop=False"):
        gradsight.node_gradient(net, "3", (5, 6, 1), x)
    for unit in [(5, 6, 1), (0, 23, 0)]:
        g = gradsight.node_gradient(net, "3", unit, x, crop=False)
        value, ref = _autograd_unit(net, "3", x, (unit[2], unit[0], unit[1]))
        assert g.values[0] == pytest.approx(value, rel=1e-6, abs=1e-7)
        np.testing.assert_allclose(g.gradient, ref, rtol=1e-6, atol=1e-7 * np.abs(ref).max())
        assert g.rect is None and g.field is None and not g.cropped  # unknown, never a wrong rectangle
    # a reflected border unit reads pixels inside the image, so its support is not at the border
    assert g.support_box() is not None
    with pytest.raises(gradsight.BadInputError, match=r"0\.\.23"):
        gradsight.node_gradient(net, "3", (24, 0, 0), x, crop=False)
    many = gradsight.node_gradients(net, "3", channel=1, inputs=x, crop=False)
    assert len(many) == 24 * 24 and many.field is None


class _UpLater(nn.Module):
    """An encoder, then an upsampling: layers before it have fields; after it, only crop=False works."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.c = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return self.c(self.up(torch.relu(self.b(torch.relu(self.a(x))))))


def test_layers_before_a_refused_operation_keep_their_field():
    net = _UpLater().eval()
    x = np.random.default_rng(1).random((32, 32, 1), dtype=np.float32)
    with pytest.raises(UnsupportedGeometryError, match="'up'"):
        gradsight.receptive_field(net, (32, 32))
    g = gradsight.node_gradient(net, "b", (6, 9, 1), x)  # before the upsampling: field and window as usual
    # a 3x3/1 then a 3x3/2 (both padding 1): r = 1 + 2 + 2 * 1 = 5, S = 2, P = 1 + 1 * 1 = 2
    assert g.rect == ((6 * 2 - 2, 6 * 2 - 2 + 5 - 1), (9 * 2 - 2, 9 * 2 - 2 + 5 - 1))
    assert g.cropped and g.support_box() == g.rect
    np.testing.assert_allclose(g.gradient, _autograd_unit(net, "b", x, (1, 6, 9))[1], rtol=1e-6, atol=1e-8)
    with pytest.raises(UnsupportedGeometryError, match=r"crop=False"):
        gradsight.node_gradient(net, "c", (3, 3, 0), x)
    g = gradsight.node_gradient(net, "c", (3, 3, 0), x, crop=False)
    np.testing.assert_allclose(g.gradient, _autograd_unit(net, "c", x, (0, 3, 3))[1], rtol=1e-6, atol=1e-8)
    assert g.rect is None


def test_an_untraced_layer_of_unknown_layout_is_refused_with_both_readings():
    class Last(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.act = nn.Upsample(scale_factor=2), nn.GELU()

        def forward(self, x):
            return self.act(self.up(x).permute(0, 2, 3, 1))  # channels last after the upsampling

    net = Last().eval()
    with pytest.raises(gradsight.BadInputError) as info:
        gradsight.node_gradient(net, "act", (0, 0, 0), np.ones((8, 8, 3), np.float32), crop=False)
    assert "(N, C, H, W)" in str(info.value) and "(N, H, W, C)" in str(info.value)
