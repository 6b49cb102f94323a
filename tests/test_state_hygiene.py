"""The user's model, tensors, hooks, modes and gradients are left exactly as they were, also on failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import small_cnn

import gradsight


def snapshot(net: torch.nn.Module) -> dict:
    return {
        "training": [m.training for m in net.modules()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "state": {k: v.clone() for k, v in net.state_dict().items()},
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(m._backward_pre_hooks)) for m in net.modules()],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    for key in before["state"]:
        assert torch.equal(before["state"][key], after["state"][key]), key


def mixed_state_net() -> torch.nn.Module:
    net = small_cnn(seed=5)
    net.train()
    net[1].eval()  # a mix of modes must come back as it was, module by module
    net[0].weight.requires_grad_(False)
    net[3].weight.grad = torch.full_like(net[3].weight, 0.25)
    return net


@pytest.mark.parametrize("fast", [True, False])
def test_model_and_input_tensor_untouched(fast):
    net = mixed_state_net()
    x = torch.randn(2, 3, 24, 24)  # negative values: model input, not a photo
    x_before = x.clone()
    before = snapshot(net)
    result = gradsight.saliency(net, x, fast=fast)
    assert_same(before, snapshot(net))
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None
    # BatchNorm ran with running statistics (eval): the result matches an eval-mode reference.
    reference = small_cnn(seed=5)
    reference.load_state_dict(net.state_dict())
    np.testing.assert_allclose(result.logits, reference(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_state_restored_when_the_call_fails(fast):
    net = mixed_state_net()
    before = snapshot(net)
    with pytest.raises(gradsight.BadInputError, match="0..4"):
        gradsight.saliency(net, torch.randn(1, 3, 24, 24), target=7, fast=fast)
    assert_same(before, snapshot(net))


def test_user_hooks_are_kept_and_called_on_their_own_modules():
    net = small_cnn(seed=6)
    seen = []
    handle = net[0].register_forward_hook(lambda m, a, out: seen.append(out.shape))
    before = snapshot(net)
    gradsight.saliency(net, torch.randn(1, 3, 16, 16))
    assert_same(before, snapshot(net))
    assert len(seen) == 1  # run once, on the user's own module (the fast path steps aside)
    handle.remove()


def test_input_array_untouched(cnn):
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 3)).astype(np.float32)
    x_before = x.copy()
    gradsight.saliency(cnn, x)
    assert np.array_equal(x, x_before)


def inplace_first_net() -> torch.nn.Module:
    """Its first operation is in place (on the input itself), and a BatchNorm makes the fast path fold."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.ReLU(inplace=True), torch.nn.Conv2d(3, 4, 3, padding=1),
                              torch.nn.BatchNorm2d(4), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(4, 4, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    net[2].running_mean.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.mark.parametrize("fast", [True, False])
def test_a_model_whose_first_operation_is_in_place(fast):
    net = inplace_first_net()
    x = torch.randn(2, 3, 12, 12)
    x_before = x.clone()
    result = gradsight.saliency(net, x, fast=fast)
    assert torch.equal(x, x_before)  # the ReLU ran on gradsight's copy, not on the user's tensor
    leaf = x.clone().requires_grad_(True)
    logits = net(leaf.clone())
    (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1)[:, None]).sum(), leaf)
    np.testing.assert_allclose(result.logits, logits.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.gradient, grad.permute(0, 2, 3, 1).numpy(), rtol=1e-4,
                               atol=1e-6 * float(grad.abs().max()))


def test_node_gradient_and_fields_of_a_model_whose_first_operation_is_in_place():
    net = inplace_first_net()
    x = np.random.default_rng(0).standard_normal((12, 12, 3)).astype(np.float32)
    x_before = x.copy()
    assert gradsight.receptive_field(net, (12, 12))["4"].size == (5, 5)
    leaf = torch.from_numpy(x).permute(2, 0, 1)[None].clone().requires_grad_(True)
    seen = []
    handle = net[4].register_forward_hook(lambda m, a, out: seen.append(out))
    net(leaf.clone())
    handle.remove()
    (ref,) = torch.autograd.grad(seen[0][0, 2, 3, 4], leaf)
    for crop in (True, False):
        g = gradsight.node_gradient(net, "4", (3, 4, 2), x, crop=crop)
        np.testing.assert_allclose(g.gradient, ref[0].permute(1, 2, 0).numpy(), rtol=1e-5, atol=1e-7)
    assert np.array_equal(x, x_before)
    _, check = gradsight.measure_field(net, "4", (5, 5), input_size=(12, 12), mode="linear")
    assert check.agree
