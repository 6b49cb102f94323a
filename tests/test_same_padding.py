"""The folded copy pads timm's TensorFlow-'SAME' convolutions inside the convolution (a zero tap instead of a
padded copy of the input). The oracle is timm's own ``Conv2dSame``: same outputs and the same input gradients
for every size parity, stride, kernel and dilation, and for the embedded model's folded copy."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from timm.layers import Conv2dSame

from gradsight.adapters.torch.folding import fold_batchnorm
from gradsight.adapters.torch.same_padding import SamePaddedConv, unpad_same_convs


def _forward_and_gradient(module, x):
    x = x.clone().requires_grad_(True)
    out = module(x)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)  # a score that mixes every output
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    return out.detach(), grad


@pytest.mark.parametrize("kernel,stride,dilation,groups", [
    (3, 2, 1, 1), (5, 2, 1, 4), (3, 1, 1, 1), (4, 2, 1, 1), (3, 3, 1, 1), (3, 2, 2, 1), (1, 2, 1, 1),
    ((3, 5), (2, 1), 1, 1)])
def test_same_padded_conv_equals_timm_conv2d_same_for_every_size_parity(kernel, stride, dilation, groups):
    torch.manual_seed(0)
    reference = Conv2dSame(4, 8, kernel, stride, dilation=dilation, groups=groups).double()
    ours = SamePaddedConv(reference)
    for rows, cols in itertools.product((11, 12, 13, 16), (9, 14)):
        x = torch.randn(2, 4, rows, cols, dtype=torch.float64)
        want, want_grad = _forward_and_gradient(reference, x)
        got, got_grad = _forward_and_gradient(ours, x)
        assert got.shape == want.shape, (rows, cols)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"{rows}x{cols}")
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-12, atol=1e-12, err_msg=f"{rows}x{cols}")


def test_same_padded_conv_keeps_the_parameters_and_their_names():
    net = torch.nn.Sequential(Conv2dSame(3, 5, 3, 2), torch.nn.ReLU(), torch.nn.Sequential(Conv2dSame(5, 5, 5, 2)))
    before = {name: p for name, p in net.named_parameters()}
    assert unpad_same_convs(net) == ["0", "2.0"]
    assert [type(m) for m in (net[0], net[2][0])] == [SamePaddedConv, SamePaddedConv]
    assert {name: p for name, p in net.named_parameters()} == before  # the very same tensors


def test_embedded_models_folded_copy_has_no_padded_copies_and_matches_timms_convolutions(embedded):
    model = embedded.module.eval()
    same_convs = [name for name, m in model.named_modules() if isinstance(m, Conv2dSame)]
    assert len(same_convs) == 5  # the stem and the four stride-2 depthwise convolutions
    torch.manual_seed(1)
    for size in ((224, 224), (225, 224), (97, 130)):  # even, odd and mixed parities after every stride
        x = torch.randn(2, 3, *size).contiguous(memory_format=torch.channels_last)
        folded = fold_batchnorm(model, x[:1])
        assert not [m for m in folded.modules() if isinstance(m, Conv2dSame)]
        # The oracle: the same folded copy with timm's padded-copy convolutions put back.
        timm_padded = copy.deepcopy(folded)
        for name in same_convs:
            ours = timm_padded.get_submodule(name)
            assert isinstance(ours, SamePaddedConv)
            back = Conv2dSame(ours.in_channels, ours.out_channels, ours.kernel_size, ours.stride,
                              dilation=ours.dilation, groups=ours.groups, bias=ours.bias is not None)
            back.weight, back.bias = ours.weight, ours.bias
            parent, _, child = name.rpartition(".")
            setattr(timm_padded.get_submodule(parent) if parent else timm_padded, child, back)
        got, got_grad = _forward_and_gradient(folded, x)
        want, want_grad = _forward_and_gradient(timm_padded, x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-5 * float(want_grad.abs().max()))


@pytest.mark.parametrize("kernel,stride", [(3, 2), (5, 2), ((3, 5), (2, 1))])
def test_without_gradients_the_packed_path_equals_timm_in_float32(kernel, stride):
    torch.manual_seed(0)
    reference = Conv2dSame(4, 8, kernel, stride).eval().requires_grad_(False)
    ours = SamePaddedConv(reference)
    for rows, cols in itertools.product((12, 13), (14, 9)):
        x = torch.randn(2, 4, rows, cols).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            got = ours(x)
        want = reference(x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()),
                                   err_msg=f"{rows}x{cols}")
    assert len(ours._packed) and not ours._packed.refused  # it really ran packed


def test_a_widening_first_needed_under_inference_mode_still_serves_gradient_passes():
    torch.manual_seed(0)
    reference = Conv2dSame(3, 4, 3, 2).requires_grad_(False)
    ours = SamePaddedConv(reference)
    x = torch.randn(1, 3, 12, 13).contiguous(memory_format=torch.channels_last)  # widening (1, 0)
    with torch.inference_mode():
        ours(x)
    got, got_grad = _forward_and_gradient(ours, x)
    want, want_grad = _forward_and_gradient(reference, x)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-6)


def test_building_the_fast_copy_leaves_the_random_generator_alone(embedded):
    state = torch.get_rng_state()
    assert fold_batchnorm(embedded.module.eval(), torch.zeros(1, 3, 224, 224)) is not None
    assert torch.equal(torch.get_rng_state(), state)
