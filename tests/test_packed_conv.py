"""The folded copy's convolutions reorder their weights once for passes without gradients. The oracle is
torch's own ``F.conv2d`` on the same weights: same numbers for every stride, padding, dilation, group count and
input shape; gradients still flow through the plain path; a refusing op falls back to it."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradsight.adapters.torch import packed_conv
from gradsight.adapters.torch.folding import fold_batchnorm
from gradsight.adapters.torch.packed_conv import KEEP_SHAPES, PackedConv, pack_convolutions


def _reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,bias", [
    (3, 1, 1, 1, 1, True), (3, 2, 1, 1, 1, False), (1, 1, 0, 1, 1, True), (5, 2, 2, 1, 8, True),
    (3, 1, 2, 2, 1, True), ((3, 1), (2, 1), (1, 0), 1, 2, True), (7, 2, 3, 1, 1, False)])
def test_packed_convolution_equals_conv2d_for_every_shape_without_gradients(kernel, stride, padding, dilation,
                                                                            groups, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, kernel, stride, padding, dilation, groups, bias).eval().requires_grad_(False)
    ours = PackedConv(conv)
    for shape in ((4, 8, 20, 20), (1, 8, 20, 20), (3, 8, 17, 26), (4, 8, 20, 20)):  # batch and size change
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            got = ours(x)
        want = _reference(conv, x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()), err_msg=str(shape))
        assert len(ours._packed) <= KEEP_SHAPES
    assert len(ours._packed) and not ours._packed.refused  # the packed path did run
    with torch.no_grad():  # plain no_grad (not inference mode) packs as well
        np.testing.assert_allclose(ours(x), _reference(conv, x), rtol=1e-5, atol=1e-5)


def test_with_gradients_the_plain_convolution_runs_and_gradients_are_exact():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, 2, 1).requires_grad_(False)
    ours = PackedConv(conv)
    x = torch.randn(2, 4, 15, 15, requires_grad=True)
    (got,) = torch.autograd.grad(ours(x).square().sum(), x)
    (want,) = torch.autograd.grad(_reference(conv, x).square().sum(), x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not len(ours._packed)


def test_a_copy_of_a_packed_module_packs_again():
    conv = PackedConv(nn.Conv2d(3, 4, 3, padding=1))
    x = torch.randn(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv(x)
    assert len(conv._packed)
    twin = copy.deepcopy(conv)  # oneDNN's opaque tensors cannot be copied: the copy starts empty
    assert not len(twin._packed)
    with torch.inference_mode():
        np.testing.assert_allclose(twin(x), conv(x), rtol=0, atol=0)


def test_an_op_that_refuses_falls_back_to_the_plain_convolution(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("not in this build")

    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", refuse)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    ours = PackedConv(conv)
    x = torch.randn(2, 3, 9, 9).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(2):
            np.testing.assert_allclose(ours(x), _reference(conv, x), rtol=1e-6, atol=1e-6)
    assert ours._packed.refused and not len(ours._packed)


def test_only_plain_zero_padded_convolutions_are_swapped():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding="same"),
                        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Sequential(nn.Conv2d(4, 2, 1)))
    assert pack_convolutions(net) == ["0", "3.0"]
    assert [type(m) for m in (net[0], net[1], net[2], net[3][0])] == [PackedConv, nn.Conv2d, nn.Conv2d, PackedConv]


def test_embedded_models_folded_copy_packs_and_predicts_the_same_logits(embedded):
    model = embedded.module.eval()
    torch.manual_seed(2)
    x = torch.randn(3, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    folded = fold_batchnorm(model, x[:1])
    packed = [m for m in folded.modules() if isinstance(m, PackedConv)]
    # Every convolution: 44 plain ones, and the five TensorFlow-'SAME' ones (which pack per widening)
    assert len(packed) == 49 and sum(type(m) is PackedConv for m in packed) == 44
    with torch.inference_mode():
        fast = folded(x)
    assert all(len(m._packed) for m in packed)
    with torch.enable_grad():  # the same copy on its plain path
        plain = folded(x.clone().requires_grad_(True)).detach()
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5 * float(plain.abs().max()))


def test_packing_is_off_where_onednn_is_switched_off():
    with torch.backends.mkldnn.flags(enabled=False):
        assert not packed_conv._op_available()
        assert pack_convolutions(nn.Sequential(nn.Conv2d(1, 1, 1))) == []


def test_a_packed_module_runs_plain_once_onednn_is_switched_off(monkeypatch):
    conv = PackedConv(nn.Conv2d(3, 4, 3, padding=1))
    x = torch.randn(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    calls = []
    real = torch._C._nn.mkldnn_reorder_conv2d_weight
    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        np.testing.assert_allclose(conv(x), _reference(conv, x), rtol=1e-6, atol=1e-6)
    assert not calls and not len(conv._packed)
    with torch.inference_mode():  # switched on again: it packs (the test above would be empty otherwise)
        conv(x)
    assert calls and len(conv._packed)


def test_threads_sharing_a_module_with_more_shapes_than_kept_get_the_right_numbers():
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    ours = PackedConv(conv)
    # More shapes than KEEP_SHAPES: the threads evict each other's entries.
    inputs = [torch.randn(b, 4, 12, 12).contiguous(memory_format=torch.channels_last) for b in (1, 2, 3, 4)]
    wants = [_reference(conv, x).detach() for x in inputs]
    errors = []

    def work(offset):
        try:
            for i in range(60):
                k = (i + offset) % len(inputs)
                with torch.inference_mode():
                    got = ours(inputs[k])
                if not torch.allclose(got, wants[k], rtol=1e-5, atol=1e-5):
                    errors.append(k)
        except Exception as error:  # noqa: BLE001 - any exception in a thread is the failure reported
            errors.append(error)

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and not ours._packed.refused and len(ours._packed)


def test_input_not_in_channels_last_layout_runs_plain_and_keeps_its_layout():
    conv = PackedConv(nn.Conv2d(3, 4, 3, padding=1))
    x = torch.randn(2, 3, 8, 8)  # ordinary NCHW: F.conv2d's output follows it, the packed op's would not
    with torch.inference_mode():
        out = conv(x)
    assert out.is_contiguous() and not len(conv._packed)
    np.testing.assert_allclose(out, _reference(conv, x).detach(), rtol=1e-6, atol=1e-6)


def test_the_fold_check_runs_the_packed_path_even_for_a_channels_first_probe(monkeypatch, embedded):
    real = torch.ops.mkldnn._convolution_pointwise

    def off_by_one(*args):
        return real(*args) + 1.0  # a packed path that is wrong

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", off_by_one)
    probe = torch.zeros(1, 3, 224, 224)  # channels first, as unit gradients hand it over
    with pytest.warns(RuntimeWarning, match="changed its outputs"):
        assert fold_batchnorm(embedded.module.eval(), probe) is None
