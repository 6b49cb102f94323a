"""The input gradient of a strided convolution with few input channels, by the phase split (``phase_grad``).
The oracle is torch's own ``convolution_backward`` (and autograd through ``F.conv2d``): in float64 the split
must agree to rounding for every kernel size, stride, padding and input-size parity; in the folded copy of a
model the gradients must match the model's own."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradsight.adapters.torch import phase_grad
from gradsight.adapters.torch.folding import fold_batchnorm
from gradsight.adapters.torch.packed_conv import PackedConv


def _torch_input_grad(grad, x, weight, stride, padding):
    return torch.ops.aten.convolution_backward(grad, x, weight, None, list(stride), list(padding), [1, 1], False,
                                               [0, 0], 1, [True, False, False])[0]


@pytest.mark.parametrize("kh,kw", [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (7, 7), (3, 5), (7, 2)])
def test_the_split_equals_torchs_input_gradient_in_float64(kh, kw):
    torch.manual_seed(kh * 10 + kw)
    worst = 0.0
    for stride, pad_h, pad_w, size in itertools.product((2, 3, 4), range(4), range(3), (7, 8, 9, 16, 17)):
        if pad_h >= kh or pad_w >= kw or size + 2 * pad_h < kh:
            continue
        x = torch.randn(2, 3, size, size + 1, dtype=torch.float64)
        weight = torch.randn(5, 3, kh, kw, dtype=torch.float64)
        out = F.conv2d(x, weight, stride=stride, padding=(pad_h, pad_w))
        grad = torch.randn_like(out)
        want = _torch_input_grad(grad, x, weight, (stride, stride), (pad_h, pad_w))
        kernel = phase_grad.phase_kernel(weight, stride, (pad_h, pad_w))
        got = phase_grad.input_grad(grad, kernel, stride, (pad_h, pad_w), (kh, kw), tuple(x.shape[-2:]))
        assert got.shape == want.shape
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
    assert worst < 1e-13


def test_the_phase_kernel_places_each_tap_where_the_arithmetic_says():
    # 1-D along the width, stride 2, padding 3, kernel 7 (ResNet's stem): input position i = 2m + r receives
    # g[o] * w[k] for k = 2(m - o) + r + 3. Phase r = 0 takes the odd taps k = 5, 3, 1 from o = m-1, m, m+1;
    # phase r = 1 the even ones k = 6, 4, 2, 0 from o = m-1 .. m+2. The kernel's tap a reads o = m - 1 + a.
    weight = torch.arange(7.0).reshape(1, 1, 1, 7) + 1  # w[k] = k + 1
    kernel = phase_grad.phase_kernel(weight, 2, (0, 3))  # (1 * 2 * 2 phases, 1, 2 rows, 4 taps)
    assert kernel.shape == (4, 1, 1, 4)
    row_phase_0 = kernel[0, 0, 0].tolist()  # channel (c=0, ry=0, rx=0); its only row is the one of ky = 0
    row_phase_1 = kernel[1, 0, 0].tolist()  # (c=0, ry=0, rx=1)
    assert row_phase_0 == [5 + 1, 3 + 1, 1 + 1, 0]
    assert row_phase_1 == [6 + 1, 4 + 1, 2 + 1, 0 + 1]


@pytest.mark.parametrize("stride,padding,kernel_size", [(2, 3, 7), (2, 1, 3), (4, 0, 4), (3, 1, 5)])
def test_a_packed_first_convolution_gives_autograds_gradient(stride, padding, kernel_size):
    torch.manual_seed(stride + kernel_size)
    conv = nn.Conv2d(3, 16, kernel_size, stride, padding).requires_grad_(False)
    ours = PackedConv(conv)
    x = torch.randn(2, 3, 31, 30).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert phase_grad.applies(ours, x, ours.weight, ours.bias)
    (got,) = torch.autograd.grad(ours(x).square().sum(), x)
    (want,) = torch.autograd.grad(F.conv2d(x, conv.weight, conv.bias, stride, padding).square().sum(), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert len(ours._phase_kernels) == 1  # built once, kept


def test_the_split_is_left_out_where_it_does_not_apply():
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    strided = PackedConv(nn.Conv2d(3, 8, 3, 2, 1).requires_grad_(False))
    assert phase_grad.applies(strided, x, strided.weight, strided.bias)
    cases = {
        "stride 1": PackedConv(nn.Conv2d(3, 8, 3, 1, 1).requires_grad_(False)),
        "many input channels": PackedConv(nn.Conv2d(3 + phase_grad.NARROW, 8, 3, 2, 1).requires_grad_(False)),
        "dilated": PackedConv(nn.Conv2d(3, 8, 3, 2, 2, dilation=2).requires_grad_(False)),
        "grouped": PackedConv(nn.Conv2d(4, 8, 3, 2, 1, groups=2).requires_grad_(False)),
        "unequal strides": PackedConv(nn.Conv2d(3, 8, 3, (2, 1), 1).requires_grad_(False)),
        "weight needs a gradient": PackedConv(nn.Conv2d(3, 8, 3, 2, 1)),
    }
    for why, conv in cases.items():
        xi = torch.randn(1, conv.in_channels, 16, 16, requires_grad=True)
        assert not phase_grad.applies(conv, xi, conv.weight, conv.bias), why
    assert not phase_grad.applies(strided, x.detach(), strided.weight, strided.bias)  # no input gradient
    with torch.no_grad():
        assert not phase_grad.applies(strided, x, strided.weight, strided.bias)


def test_a_weight_that_needs_a_gradient_still_gets_it():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, 2, 1)
    ours = PackedConv(conv)  # shares the parameters
    x = torch.randn(1, 3, 9, 9, requires_grad=True)
    got = torch.autograd.grad(ours(x).sum(), (x, ours.weight))
    want = torch.autograd.grad(F.conv2d(x, conv.weight, conv.bias, 2, 1).sum(), (x, conv.weight))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


class _Stem(nn.Module):
    """conv(7x7, stride 2) -> BN -> ReLU -> conv(3x3) -> BN -> pool -> linear, a ResNet's first steps."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def test_the_folded_copy_uses_the_split_and_gives_the_models_gradient():
    torch.manual_seed(2)
    model = _Stem().eval()
    for bn in (model.bn1, model.bn2):  # statistics that are not the identity
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    clone = fold_batchnorm(model, torch.randn(1, 3, 32, 32))
    assert clone is not None
    x = torch.randn(3, 3, 37, 36)
    leaf = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(model(leaf)[:, 2].sum(), leaf)
    leaf = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    (got,) = torch.autograd.grad(clone(leaf)[:, 2].sum(), leaf)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert len(clone.conv1._phase_kernels) == 1 and not clone.conv2._phase_kernels
    # the copy keeps its spatial kernels in the activations' channels-last order
    assert clone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kernel,stride", [(3, 2), (4, 2), (5, 2), (3, 3)])
def test_a_same_padded_first_convolution_gives_timms_gradient_for_every_size_parity(kernel, stride):
    # timm's 'SAME' convolution (the embedded model's stem) reaches the split with a widened kernel and its
    # own padding per input size (same_padding), each kept under its own key
    from timm.layers import Conv2dSame

    from gradsight.adapters.torch.same_padding import SamePaddedConv

    torch.manual_seed(kernel)
    reference = Conv2dSame(3, 8, kernel, stride).double().requires_grad_(False)
    ours = SamePaddedConv(reference)
    for rows, cols in itertools.product((11, 12, 16), (9, 14)):
        x = torch.randn(2, 3, rows, cols, dtype=torch.float64, requires_grad=True)
        assert phase_grad.applies(ours, x, ours.weight, ours.bias)
        out = reference(x)
        weights = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)
        (want,) = torch.autograd.grad((out * weights).sum(), x)
        (got,) = torch.autograd.grad((ours(x) * weights).sum(), x)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"{rows}x{cols}")
    assert len(ours._phase_kernels) >= 2  # odd and even sizes widen differently
