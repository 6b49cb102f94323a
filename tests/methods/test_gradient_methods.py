"""The gradient and Input x Gradient: closed forms on a linear model, Captum on ResNet-18 and the embedded model.

Conventions: our `attribution` is the signed per-channel value (N, H, W, C); Captum's Saliency is compared with
abs=False (its default takes |grad|), Captum's InputXGradient is input * grad on the same model input. The
gradient's map is max over channels of |grad| (Simonyan et al.), Input x Gradient's the signed channel sum.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, Saliency
from method_models import conditioned_resnet18, linear_model, nchw, nhwc, normal_inputs, rel_l2

from gradsight.inputs import prepare_inputs
from gradsight.methods.attribute import attribute


def test_linear_model_gradient_is_w_and_input_x_gradient_is_w_times_x():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 6, 3)).astype(np.float32)
    x = rng.standard_normal((3, 5, 6, 3)).astype(np.float32)
    net = linear_model(w, c=-2.0)
    g = attribute(net, x, method="gradient", target=0)
    np.testing.assert_allclose(g.attribution, np.broadcast_to(w, x.shape), rtol=1e-6)
    np.testing.assert_allclose(g.maps, np.broadcast_to(np.abs(w).max(axis=-1), (3, 5, 6)), rtol=1e-6)
    ixg = attribute(net, x, method="input_x_gradient", target=[0, 1, 0])
    sign = np.array([1, -1, 1], np.float32)[:, None, None, None]  # class 1 is -(w.x)
    np.testing.assert_allclose(ixg.attribution, sign * w * x, rtol=1e-6)
    np.testing.assert_allclose(ixg.maps, (sign * w * x).sum(axis=-1), rtol=1e-5, atol=1e-6)
    # Logits are recorded: w.x + c and its negative.
    z = (w * x).sum(axis=(1, 2, 3)) - 2.0
    np.testing.assert_allclose(ixg.logits, np.stack([z, -z], 1), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def resnet():
    return conditioned_resnet18()


@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_equals_captum_on_resnet18(resnet, method):
    x = normal_inputs(3, 64, seed=1)
    targets = torch.tensor([1, 4, 9])
    ours = attribute(resnet, x, method=method, target=targets.tolist())
    if method == "gradient":
        theirs = Saliency(resnet).attribute(nchw(x), target=targets, abs=False)
    else:
        theirs = InputXGradient(resnet).attribute(nchw(x).requires_grad_(), target=targets)
    assert rel_l2(ours.attribution, nhwc(theirs)) < 1e-4  # BatchNorm folded on our side (fast=True)
    plain = attribute(resnet, x, method=method, target=targets.tolist(), fast=False)
    np.testing.assert_allclose(plain.attribution, nhwc(theirs), rtol=1e-5, atol=1e-6 * np.abs(plain.attribution).max())


def test_gradient_equals_captum_on_the_embedded_model_with_the_photo(embedded, ouzel_path):
    ours = attribute(embedded, ouzel_path, method="gradient", fast=False)
    assert ours.targets.tolist() == [20]
    x = prepare_inputs([ouzel_path], embedded.preprocess).arrays
    theirs = nhwc(Saliency(embedded.module).attribute(nchw(x), target=20, abs=False))
    np.testing.assert_allclose(ours.attribution, theirs, rtol=1e-5, atol=1e-6 * np.abs(theirs).max())
    np.testing.assert_allclose(ours.maps, np.abs(theirs).max(axis=-1), rtol=1e-5, atol=1e-6 * np.abs(theirs).max())


def test_input_x_gradient_equals_captum_on_the_embedded_model_with_the_photo(embedded, ouzel_path):
    x = prepare_inputs([ouzel_path], embedded.preprocess).arrays
    theirs = nhwc(InputXGradient(embedded.module).attribute(nchw(x).requires_grad_(), target=20))
    exact = attribute(embedded, ouzel_path, method="input_x_gradient", fast=False)
    np.testing.assert_allclose(exact.attribution, theirs, rtol=1e-5, atol=1e-6 * np.abs(theirs).max())
    np.testing.assert_allclose(exact.maps, theirs.sum(axis=-1), rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    folded = attribute(embedded, ouzel_path, method="input_x_gradient")  # BatchNorm folded (the default)
    assert rel_l2(folded.attribution, theirs) < 1e-4


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maps_are_numpys_channel_reductions_bit_for_bit(channels, dtype):
    from gradsight.methods.registry import to_map

    rng = np.random.default_rng(channels)
    a = (rng.standard_normal((2, 7, 9, channels)) * rng.uniform(1e-3, 1e3, (2, 7, 9, channels))).astype(dtype)
    permuted = np.ascontiguousarray(a.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)  # a strided view, as torch's
    for x in (a, permuted):
        np.testing.assert_array_equal(to_map(x, "max_abs"), np.abs(a).max(axis=-1))
        np.testing.assert_array_equal(to_map(x, "sum"), a.sum(axis=-1))
        assert to_map(x, "sum").dtype == dtype
    with pytest.raises(ValueError):
        to_map(a, "cam")
