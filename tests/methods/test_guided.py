"""Guided backprop and deconvnet: the closed form on f = v . relu(W x), and Captum on ResNet-18 and the embedded model.

Conventions: attributions are the raw modified gradients (N, H, W, C); the map is max over channels of |.|.
Captum's GuidedBackprop/Deconvolution modify only nn.ReLU modules: on the embedded model (ReLU6 everywhere)
Captum would return the plain gradient. So Captum runs on a copy where every ReLU6 is written as
clamp(ReLU(x), max=6): the clamp passes gradients where x < 6 and Captum's guided ReLU where x > 0 and the
gradient is positive, which is the guided rule for ReLU6 (0 < x < 6, positive gradient) that gradsight applies.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop
from method_models import conditioned_resnet18, nchw, nhwc, normal_inputs, rel_l2
from torch import nn

import gradsight
from gradsight.inputs import prepare_inputs
from gradsight.methods.attribute import attribute


def v_relu_wx(w: np.ndarray, v: np.ndarray) -> nn.Module:
    """f(x) = V relu(W x) on a 1x1 'image' of len(x) channels (W: (m, n), V: (K, m)), in-place ReLU."""
    net = nn.Sequential(nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False), nn.ReLU(inplace=True),
                        nn.Conv2d(w.shape[0], v.shape[0], 1, bias=False), nn.Flatten())
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w)[:, :, None, None])
        net[2].weight.copy_(torch.from_numpy(v)[:, :, None, None])
    return net.eval()


def test_closed_forms_on_v_relu_wx():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    v = rng.standard_normal((3, 8)).astype(np.float32)
    x = rng.standard_normal((4, 1, 1, 5)).astype(np.float32) * 2
    net = v_relu_wx(w, v)
    targets = [0, 1, 2, 1]
    guided = attribute(net, x, method="guided_backprop", target=targets)
    deconv = attribute(net, x, method="deconvnet", target=targets)
    plain = attribute(net, x, method="gradient", target=targets)
    for i, k in enumerate(targets):
        on = (w @ x[i, 0, 0] > 0).astype(np.float32)                # which hidden units are active
        expected = {
            "plain": w.T @ (on * v[k]),                               # the chain rule
            "guided": w.T @ (on * np.maximum(v[k], 0)),               # forward mask and positive gradient
            "deconv": w.T @ np.maximum(v[k], 0),                      # positive gradient only
        }
        for name, result in (("plain", plain), ("guided", guided), ("deconv", deconv)):
            np.testing.assert_allclose(result.attribution[i, 0, 0], expected[name], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}, input {i}")
        np.testing.assert_allclose(guided.maps[i], np.abs(expected["guided"]).max(), rtol=1e-5)
    # The user's net still has its own ReLU, and a later plain gradient is still the chain rule.
    assert type(net[1]) is nn.ReLU
    np.testing.assert_allclose(attribute(net, x, method="gradient", target=targets).attribution, plain.attribution)


@pytest.fixture(scope="module")
def resnet():
    return conditioned_resnet18()


@pytest.mark.parametrize("method,reference", [("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)])
def test_equals_captum_on_resnet18(resnet, method, reference):
    # torchvision's BasicBlock calls one in-place self.relu twice: both must follow the rule.
    x = normal_inputs(2, 64, seed=1)
    ours = attribute(resnet, x, method=method, target=[3, 6])
    theirs = reference(resnet).attribute(nchw(x).requires_grad_(), target=torch.tensor([3, 6]))
    # BatchNorm folded on our side (fast=True): float32 rounding only.
    assert rel_l2(ours.attribution, nhwc(theirs)) < 1e-4


class _Clamp6(nn.Module):
    def forward(self, x):
        return torch.clamp(x, max=6.0)


class _PassThrough6(torch.autograd.Function):
    """min(x, 6) forward; the gradient passes everywhere (deconvnet reads no forward value)."""

    @staticmethod
    def forward(ctx, x):
        return torch.clamp(x, max=6.0)

    @staticmethod
    def backward(ctx, g):
        return g


class _Clamp6PassingGradients(nn.Module):
    def forward(self, x):
        return _PassThrough6.apply(x)


def relu6_as_relu_and_clamp(model: nn.Module, clamp: type[nn.Module] = _Clamp6) -> nn.Module:
    clone = copy.deepcopy(model).eval()
    for name, module in list(clone.named_modules()):
        if type(module) is nn.ReLU6:
            parent, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent) if parent else clone, child, nn.Sequential(nn.ReLU(), clamp()))
    return clone


@pytest.mark.slow
def test_guided_backprop_equals_captum_on_the_embedded_model_with_the_photo(embedded, ouzel_path):
    x = prepare_inputs([ouzel_path], embedded.preprocess).arrays
    ours = attribute(embedded, x, method="guided_backprop")
    assert ours.targets.tolist() == [20]
    rewritten = relu6_as_relu_and_clamp(embedded.module)
    with torch.no_grad():  # the rewrite computes the same function
        np.testing.assert_allclose(rewritten(nchw(x)).numpy(), embedded.module(nchw(x)).numpy(), rtol=1e-5,
                                   atol=1e-4)
    theirs = GuidedBackprop(rewritten).attribute(nchw(x).requires_grad_(), target=20)
    plain = gradsight.saliency(embedded, x).gradient
    assert rel_l2(ours.attribution, nhwc(theirs)) < 1e-3  # BatchNorm folded on our side
    assert rel_l2(ours.attribution, plain) > 0.5  # and guided backprop is not the gradient


@pytest.mark.slow
def test_deconvnet_equals_captum_on_the_embedded_model_with_the_photo(embedded, ouzel_path):
    # Deconvnet's rule ignores the forward pass: a ReLU6 passes max(g, 0) whatever its input, which is Captum's
    # Deconvolution on ReLU followed by a clamp at 6 whose gradient passes everywhere.
    x = prepare_inputs([ouzel_path], embedded.preprocess).arrays
    ours = attribute(embedded, x, method="deconvnet")
    rewritten = relu6_as_relu_and_clamp(embedded.module, _Clamp6PassingGradients)
    with torch.no_grad():
        np.testing.assert_allclose(rewritten(nchw(x)).numpy(), embedded.module(nchw(x)).numpy(), rtol=1e-5,
                                   atol=1e-4)
    theirs = Deconvolution(rewritten).attribute(nchw(x).requires_grad_(), target=20)
    assert rel_l2(ours.attribution, nhwc(theirs)) < 1e-3  # BatchNorm folded on our side
    guided = attribute(embedded, x, method="guided_backprop")
    assert rel_l2(ours.attribution, guided.attribution) > 0.5  # and the two rules differ on this model


def test_refuses_models_it_cannot_modify_by_name(cnn):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))

    x = normal_inputs(1, 8)
    with pytest.raises(gradsight.BadInputError, match="functions in forward"):
        attribute(Functional(), x, method="guided_backprop")
    no_relu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(gradsight.BadInputError, match="no ReLU"):
        attribute(no_relu, x, method="guided_backprop")
    smooth = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(gradsight.BadInputError, match="GELU"):
        attribute(smooth, x, method="deconvnet")
