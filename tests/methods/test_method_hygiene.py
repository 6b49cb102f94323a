"""Every method leaves the user's model and tensors exactly as they were, also when it fails half-way.

Checked as for saliency (tests/test_state_hygiene.py): training flags module by module, requires_grad flags,
parameters' .grad, every parameter and buffer bit for bit (BatchNorm running statistics included), the hook
dictionaries; and the user's input tensor (values, requires_grad, .grad).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from testkit import small_cnn
from torch import nn

import gradsight
from gradsight.methods.attribute import attribute

FAST_OPTIONS = {
    "gradient": {}, "input_x_gradient": {}, "integrated_gradients": {"n_steps": 3, "internal_batch_size": 2},
    "smoothgrad": {"n_samples": 3, "internal_batch_size": 2}, "guided_backprop": {}, "deconvnet": {},
    "grad_cam": {}, "grad_cam_pp": {}, "layer_cam": {}, "occlusion": {"window": 8, "stride": 8},
    "score_cam": {"internal_batch_size": 5},
}


def snapshot(net: nn.Module) -> dict:
    return {
        "training": [m.training for m in net.modules()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "state": {k: v.clone() for k, v in net.state_dict().items()},
        "hooks": [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks),
                   dict(m._backward_pre_hooks)) for m in net.modules()],
        "types": [type(m) for m in net.modules()],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    assert before["types"] == after["types"]  # no activation replaced in the user's model
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        a, b = before["state"][key], after["state"][key]
        assert a.dtype == b.dtype and torch.equal(a.view(-1).view(torch.uint8) if a.is_floating_point() else a,
                                                  b.view(-1).view(torch.uint8) if b.is_floating_point() else b), key


def mixed_state_net() -> nn.Module:
    net = small_cnn(seed=5)
    net.train()
    net[1].eval()  # a mix of modes must come back as it was, module by module
    net[0].weight.requires_grad_(False)
    net[3].weight.grad = torch.full_like(net[3].weight, 0.25)
    net[4].register_forward_hook(lambda m, a, out: None)
    return net


@pytest.mark.parametrize("method", sorted(FAST_OPTIONS))
def test_model_and_input_tensor_untouched_and_inference_mode_used(method):
    net = mixed_state_net()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x_before = x.clone()
    before = snapshot(net)
    result = attribute(net, x, method=method, target=[1, 3], **FAST_OPTIONS[method])
    assert_same(before, snapshot(net))
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None
    # BatchNorm used its running statistics: the same as on an eval-mode copy without the user's extras.
    reference = small_cnn(seed=5)
    reference.load_state_dict(net.state_dict())
    expected = attribute(reference, x, method=method, target=[1, 3], **FAST_OPTIONS[method])
    np.testing.assert_allclose(result.maps, expected.maps, rtol=1e-4, atol=1e-6 * np.abs(expected.maps).max())
    with torch.no_grad():
        np.testing.assert_allclose(result.logits, reference.eval()(x).numpy(), rtol=1e-4, atol=1e-5)


def test_numpy_input_untouched(cnn):
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    x_before = x.copy()
    for method, options in FAST_OPTIONS.items():
        attribute(cnn, x, method=method, **options)
        assert np.array_equal(x, x_before), method


class FunctionalRelu(nn.Module):
    """Conv-BN-ReLU in train mode whose last ReLU is a function: guided backprop must refuse it."""

    def __init__(self):
        super().__init__()
        self.body = small_cnn(seed=7)[:9]
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)).mean((2, 3)))


class BreaksHalfWay(nn.Module):
    """A model that fails half-way through a method: its 4th forward pass (copies included) raises."""

    calls = 0  # on the class: copies of the model (folded, modified) count too

    def __init__(self):
        super().__init__()
        self.net = small_cnn(seed=8)
        type(self).calls = 0

    def forward(self, x):
        type(self).calls += 1
        if type(self).calls > 3:
            raise RuntimeError("out of memory (simulated)")
        return self.net(x)


def failing_calls():
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return [
        ("guided_backprop on a functional ReLU", FunctionalRelu, dict(method="guided_backprop"),
         gradsight.BadInputError, "functions"),
        ("deconvnet on a functional ReLU", FunctionalRelu, dict(method="deconvnet"), gradsight.BadInputError,
         "functions"),
        ("grad_cam on a linear layer", lambda: small_cnn(seed=9), dict(method="grad_cam", layer="12"),
         gradsight.BadInputError, "spatial"),
        ("grad_cam_pp on the pooled map", lambda: small_cnn(seed=9), dict(method="grad_cam_pp", layer="10"),
         gradsight.BadInputError, "more than one position"),
        ("integrated_gradients, model fails half-way", BreaksHalfWay,
         dict(method="integrated_gradients", n_steps=8, internal_batch_size=2), RuntimeError, "simulated"),
        ("smoothgrad, model fails half-way", BreaksHalfWay,
         dict(method="smoothgrad", n_samples=8, internal_batch_size=2), RuntimeError, "simulated"),
        ("occlusion, model fails half-way", BreaksHalfWay,
         dict(method="occlusion", window=4, stride=4, internal_batch_size=2), RuntimeError, "simulated"),
        ("integrated_gradients with a baseline of the wrong shape", lambda: small_cnn(seed=9),
         dict(method="integrated_gradients", baseline=np.zeros((8, 8, 3), np.float32)),
         gradsight.BadInputError, "shape"),
    ], x


@pytest.mark.parametrize("case", range(8))
def test_state_restored_when_a_method_fails(case):
    cases, x = failing_calls()
    _, make, options, error, match = cases[case]
    net = make()
    net.train()
    first = next(net.parameters())
    first.grad = torch.full_like(first, 0.5)
    before = snapshot(net)
    x_before = x.clone()
    with pytest.raises(error, match=match):
        attribute(net, x, **options)
    assert_same(before, snapshot(net))
    assert torch.equal(x, x_before) and x.grad is None


def test_the_modified_copy_is_private_and_made_once_per_call(monkeypatch):
    # Guided backprop on a batch split in 3 chunks deep-copies the model once, and never touches the user's.
    net = small_cnn(seed=10)
    copies = []
    real = copy.deepcopy
    monkeypatch.setattr(copy, "deepcopy", lambda obj, *a: copies.append(obj is net) or real(obj, *a))
    attribute(net, torch.randn(3, 3, 16, 16), method="guided_backprop", batch_size=1)
    assert copies.count(True) == 1
    assert sum(type(m) is nn.ReLU for m in net.modules()) == 3
