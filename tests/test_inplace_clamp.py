"""The folded copy's in-place ReLU6 / Hardtanh clamp without copying their input under autograd, and inside the
convolution before them without gradients. The oracle is torch's own module on the same input: the same output,
the same input tensor edited in place, and bit-identical gradients, including at the bounds, outside them and at
NaN; for the fused clamp, F.conv2d then F.hardtanh."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from gradsight.adapters.torch.folding import fold_batchnorm
from gradsight.adapters.torch.inplace_clamp import InplaceClamp, restore_clamps, swap_inplace_clamps
from gradsight.adapters.torch.packed_conv import PackedConv


def _inputs() -> torch.Tensor:
    """Values below, at, between and above the bounds of ReLU6 and Hardtanh(-1, 2), a NaN, and random ones."""
    torch.manual_seed(0)
    edges = torch.tensor([-7.0, -1.0, -0.5, 0.0, 1e-7, 1.0, 2.0, 3.0, 5.999, 6.0, 6.001, 9.0, float("nan")])
    x = torch.randn(2, 3, 8, 8) * 4 + 2
    x.view(-1)[: len(edges)] = edges
    return x


def _grad_through(act: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(output, d sum(out * w) / d x, whether the activation's input tensor is its output): input not a leaf."""
    leaf = x.clone().requires_grad_(True)
    inner = leaf * 1.0
    out = act(inner)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    (grad,) = torch.autograd.grad(out, leaf, grad_outputs=weights)  # the NaN's gradient is compared too
    return out.detach(), grad, out is inner


@pytest.mark.parametrize("original", [nn.ReLU6(inplace=True), nn.Hardtanh(-1.0, 2.0, inplace=True)])
def test_gradients_and_outputs_are_bit_identical_to_torchs_module(original):
    ours = InplaceClamp(original)
    x = _inputs()
    want_out, want_grad, want_inplace = _grad_through(original, x)
    got_out, got_grad, got_inplace = _grad_through(ours, x)
    assert torch.equal(torch.nan_to_num(got_out, nan=-123.0), torch.nan_to_num(want_out, nan=-123.0))
    assert torch.equal(got_grad, want_grad)
    assert got_inplace and want_inplace  # in place, as the module it replaces
    # The derivative itself: 1 strictly inside the bounds, 0 at and outside them (x = 0 and x = 6 included).
    lo, hi = original.min_val, original.max_val
    passes = (x > lo) & (x < hi)  # a NaN is neither: its gradient is 0 (torch's kernel, and ours)
    weights = torch.linspace(-1, 1, x.numel()).view_as(x)
    np.testing.assert_array_equal(got_grad, torch.where(passes, weights, 0.0))


def test_no_copy_of_the_input_is_made_under_autograd():
    x = torch.randn(4, 8, 16, 16)

    def ops(act):
        leaf = x.clone().requires_grad_(True)
        inner = leaf * 2.0
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            act(inner).sum().backward()
        return {event.key for event in prof.key_averages()}

    assert "aten::clone" in ops(nn.ReLU6(inplace=True))  # what the swap is for
    assert "aten::clone" not in ops(InplaceClamp(nn.ReLU6(inplace=True)))


def test_without_gradients_views_and_leaves_it_behaves_as_torchs_module():
    ours, theirs = InplaceClamp(nn.ReLU6(inplace=True)), nn.ReLU6(inplace=True)
    x = _inputs()
    with torch.no_grad():
        a, b = x.clone(), x.clone()
        assert ours(a) is a and theirs(b) is b
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    # A view of a tensor that needs gradients: torch's own path (autograd rebases the view's history).
    base = x.clone().requires_grad_(True)
    base_view = base * 1.0
    (got,) = torch.autograd.grad(ours(base_view[:, 1:]).nan_to_num().sum(), base)
    base_view = base * 1.0
    (want,) = torch.autograd.grad(theirs(base_view[:, 1:]).nan_to_num().sum(), base)
    assert torch.equal(got, want)
    # A leaf that needs gradients cannot be edited in place: the same refusal as torch's module.
    with pytest.raises(RuntimeError, match="leaf Variable"):
        theirs(x.clone().requires_grad_(True))
    with pytest.raises(RuntimeError, match="leaf Variable"):
        ours(x.clone().requires_grad_(True))


def test_only_plain_in_place_modules_without_hooks_and_with_exact_bounds_are_swapped():
    class Clipped(nn.ReLU6):  # a subclass may compute something else
        pass

    hooked = nn.ReLU6(inplace=True)
    hooked.register_forward_hook(lambda *args: None)
    # -0.1 and 0.1 round in float16: the backward would compare a rounded output with the exact bound
    net = nn.Sequential(nn.ReLU6(inplace=True), nn.ReLU6(), Clipped(inplace=True), hooked,
                        nn.Hardtanh(-2, 2, inplace=True), nn.ReLU(inplace=True), nn.Hardtanh(-0.1, 0.1, inplace=True))
    assert swap_inplace_clamps(net) == ["0", "4"]
    assert (net[0].min_val, net[0].max_val, net[4].min_val, net[4].max_val) == (0.0, 6.0, -2.0, 2.0)
    assert restore_clamps(net) == ["0", "4"]
    assert type(net[0]) is nn.ReLU6 and type(net[4]) is nn.Hardtanh and (net[4].min_val, net[4].max_val) == (-2, 2)
    assert net[0].inplace and net[4].inplace


def test_half_precision_gradients_are_torchs_for_the_bounds_that_are_swapped():
    for bounds in ((0.0, 6.0), (-1.0, 2.0)):
        x = (_inputs() * 1.7).to(torch.bfloat16)
        original = nn.Hardtanh(*bounds, inplace=True)
        assert torch.equal(_grad_through(InplaceClamp(original), x)[1], _grad_through(original, x)[1])


class _EditsAfterTheClamp(nn.Module):
    """conv -> BatchNorm -> in-place ReLU6, whose output is then scaled in place (torch keeps a copy of the
    clamp's input for the backward pass; the swapped clamp keeps its output, which this edits)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        y.mul_(2.0)
        return self.head(y.mean((2, 3)))


def test_an_in_place_edit_after_the_clamp_gets_torchs_modules_back_in_the_folded_copy():
    model = _EditsAfterTheClamp().eval()
    x = torch.randn(2, 3, 12, 12)
    folded = fold_batchnorm(model, x[:1])
    assert folded is not None and type(folded.act) is nn.ReLU6 and folded.act.inplace
    assert not any(isinstance(m, InplaceClamp) for m in folded.modules())

    def input_gradient(net):
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(leaf)[:, 1].sum(), leaf)
        return grad

    np.testing.assert_allclose(input_gradient(folded), input_gradient(model), rtol=1e-4, atol=1e-6)


def test_a_model_with_a_nan_statistic_gets_no_folded_copy():
    model = _EditsAfterTheClamp().eval()
    with torch.no_grad():
        model.bn.running_var[3] = float("nan")
    assert fold_batchnorm(model, torch.randn(1, 3, 12, 12)) is None


def test_embedded_models_folded_copy_swaps_its_relu6s_and_keeps_the_input_gradient(embedded):
    model = embedded.module.eval()
    torch.manual_seed(3)
    x = torch.randn(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    folded = fold_batchnorm(model, x[:1])
    relu6s = sum(type(m) is nn.ReLU6 for m in model.modules())
    assert relu6s == 33 and sum(isinstance(m, InplaceClamp) for m in folded.modules()) == relu6s

    def input_gradient(net):
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(leaf)[:, 20].sum(), leaf)
        return grad

    want = input_gradient(model)
    got = input_gradient(folded)
    # Not bit-identical: BatchNorm is folded into the convolutions (float64, then rounded once).
    assert float((got - want).norm() / want.norm()) < 2e-3


# --- the clamp inside the packed convolution (no gradients) ------------------------------------------------

class _Chain(nn.Module):
    """What timm's BatchNormAct2d leaves once folded: an identity ``drop``, then the activation."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.drop, self.act = nn.Identity(), act

    def forward(self, x):
        return self.act(self.drop(x))


def _fused_pair(bounds=(0.0, 6.0)):
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 8, 3, padding=1).requires_grad_(False)
    with torch.no_grad():
        conv.weight.mul_(8.0)  # outputs well below and above both bounds
    packed = PackedConv(conv)
    chain = _Chain(InplaceClamp(nn.Hardtanh(*bounds, inplace=True)))
    packed.fuse_clamp(chain, chain.act)
    want = torch.nn.functional.hardtanh(
        torch.nn.functional.conv2d(_conv_input(), conv.weight, conv.bias, padding=1), *bounds)
    return packed, chain, want


def _conv_input() -> torch.Tensor:
    return torch.randn(3, 4, 10, 10, generator=torch.Generator().manual_seed(6)).contiguous(
        memory_format=torch.channels_last)


def _count_clamps(monkeypatch) -> list:
    calls = []
    real = nn.Hardtanh.forward
    monkeypatch.setattr(nn.Hardtanh, "forward", lambda self, x: calls.append(1) or real(self, x))
    return calls


@pytest.mark.parametrize("bounds", [(0.0, 6.0), (-1.0, 2.0)])
def test_clamp_inside_the_packed_convolution_equals_convolution_then_clamp(monkeypatch, bounds):
    packed, chain, want = _fused_pair(bounds)
    calls = _count_clamps(monkeypatch)
    with torch.inference_mode():
        got = chain(packed(_conv_input()))
    assert float(want.min()) == bounds[0] and float(want.max()) == bounds[1]  # both bounds are reached
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert calls == []  # the activation left the convolution's tensor as it was
    with torch.inference_mode():  # a tensor the convolution did not make is clamped as usual
        other = torch.full((1, 8, 2, 2), 9.0)
        assert float(chain(other).max()) == bounds[1] and calls == [1]


def test_a_tensor_edited_after_the_convolution_is_clamped_again(monkeypatch):
    packed, chain, want = _fused_pair()
    calls = _count_clamps(monkeypatch)
    with torch.no_grad():  # (inference tensors keep no version to compare)
        out = packed(_conv_input())
        out.add_(100.0)  # what the convolution clamped is not what reaches the activation
        got = chain(out)
    assert calls == [1] and float(got.max()) == 6.0


def test_a_build_whose_op_refuses_the_clamp_still_packs(monkeypatch):
    packed, chain, want = _fused_pair()
    real = torch.ops.mkldnn._convolution_pointwise

    def no_clamp(*args):
        if args[7] != "none":
            raise RuntimeError("post-op not supported")
        return real(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", no_clamp)
    with torch.inference_mode():
        got = chain(packed(_conv_input()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert packed._then is None and not packed._packed.refused and len(packed._packed)


def test_with_gradients_the_activation_clamps_itself():
    packed, chain, want = _fused_pair()
    x = _conv_input().requires_grad_(True)
    got = chain(packed(x * 1.0))
    np.testing.assert_allclose(got.detach(), want, rtol=1e-5, atol=1e-5)
    assert type(got.grad_fn).__name__ == "_ClampInPlaceBackward"  # the clamp ran in the activation


@pytest.mark.parametrize("where", ["conv output", "chain input", "drop", "act input", "global"])
def test_a_hook_that_would_see_the_difference_turns_the_fusion_off(where, monkeypatch):
    packed, chain, want = _fused_pair()
    seen = []

    def record(module, args, out=None):
        seen.append((out if out is not None else args[0]).detach().clone())

    if where == "conv output":
        handle = packed.register_forward_hook(record)
    elif where == "chain input":
        handle = chain.register_forward_pre_hook(record)
    elif where == "drop":
        handle = chain.drop.register_forward_hook(record)
    elif where == "act input":
        handle = chain.act.register_forward_pre_hook(record)
    else:
        handle = nn.modules.module.register_module_forward_pre_hook(
            lambda module, args: record(module, args) if module is chain.act else None)
    try:
        with torch.inference_mode():
            got = chain(packed(_conv_input()))
    finally:
        handle.remove()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # What the hook saw is the convolution's own output, below 0 and above 6 in places: not clamped.
    assert float(seen[0].min()) < 0 and float(seen[0].max()) > 6


def test_a_copy_of_a_fused_chain_keeps_its_fusion_and_forgets_the_last_tensor():
    packed, chain, want = _fused_pair()
    holder = nn.Sequential(packed, chain)
    with torch.inference_mode():
        holder(_conv_input())
        packed(_conv_input())  # made but never handed on: the activation still remembers it
    assert chain.act._clamped is not None
    twin = copy.deepcopy(holder)
    assert "_clamped" not in twin[1].act.__dict__ and twin[0]._then[1] is twin[1].act
    with torch.inference_mode():
        np.testing.assert_allclose(twin(_conv_input()), want, rtol=1e-5, atol=1e-5)
    pickle.dumps(holder)


def test_embedded_models_folded_copy_fuses_every_relu6_into_its_convolution(embedded):
    folded = fold_batchnorm(embedded.module.eval(), torch.zeros(1, 3, 224, 224))
    fused = [m for m in folded.modules() if isinstance(m, PackedConv) and m._then is not None]
    assert len(fused) == 33 and {type(m._then[1]) for m in fused} == {InplaceClamp}
