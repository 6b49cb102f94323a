"""Inner-node gradients: equal to Captum's NeuronGradient, equal with and without the partial/cropped run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import NeuronGradient

import gradsight
from gradsight.adapters.torch_zoo import seed_cnn
from gradsight.methods.node_gradient import crop_window


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


def test_a_whole_channel():
    result = gradsight.node_gradients("seed-cnn", "L6", channel=2)
    assert len(result) == 16 * 16 and set(result.units[:, 2]) == {2}
    assert result.units[:, :2].tolist() == [[x, y] for x in range(16) for y in range(16)]


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
