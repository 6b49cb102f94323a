"""Every method on Keras: the same seed-CNN classifier in both frameworks gives the same map for every method,
and Keras SmoothGrad and Grad-CAM/Grad-CAM++ agree with tf-keras-vis where their conventions can be aligned."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import gradsight  # noqa: E402
from gradsight.adapters.keras.models import copy_seed_weights, keras_seed_cnn  # noqa: E402
from gradsight.adapters.torch.zoo import seed_cnn  # noqa: E402

# Small, quick settings for the methods that take many passes; the comparison is what matters.
OPTIONS = {
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"n_samples": 4, "noise_level": 0.2},
    "grad_cam": {"layer": "L5"},
    "grad_cam_pp": {"layer": "L5"},
    "layer_cam": {"layer": "L4"},
    "score_cam": {"layer": "L6"},
    "occlusion": {"window": 16, "stride": 8},
}


@pytest.fixture(scope="module")
def pair():
    torch_net = seed_cnn("same", seed=5)
    keras_model = keras_seed_cnn(seed=5)
    copy_seed_weights(torch_net, keras_model)
    return torch_net, keras_model


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(8).normal(0.2, 1.0, size=(2, 128, 128, 1)).astype(np.float32)


@pytest.mark.parametrize("method", [m["name"] for m in gradsight.list_methods()])
def test_every_method_gives_the_same_map_in_both_frameworks(pair, inputs, method):
    torch_net, keras_model = pair
    options = OPTIONS.get(method, {})
    t = gradsight.attribute(torch_net, inputs, method=method, target=[3, None], **options)
    k = gradsight.attribute(keras_model, inputs, method=method, target=[3, None], **options)
    assert (t.framework, k.framework) == ("torch", "keras")
    np.testing.assert_array_equal(t.targets, k.targets)
    scale = max(float(np.abs(t.maps).max()), 1e-12)
    np.testing.assert_allclose(t.maps, k.maps, rtol=1e-3, atol=1e-4 * scale)
    if t.attribution is not None:
        np.testing.assert_allclose(t.attribution, k.attribution, rtol=1e-3,
                                   atol=1e-4 * float(np.abs(t.attribution).max()))
    assert t.options == k.options


def test_smoothgrad_equals_tf_keras_vis_given_the_same_noise(pair, inputs, monkeypatch):
    """tf-keras-vis draws its noise with np.random.normal over (samples, N, H, W, C) at sigma = level * (max -
    min) per image, as we do; we hand it our noise (sample s from the stream (seed, s)) and ask it for the signed
    mean gradient (gradient_modifier=None, keepdims=True, no normalisation): our variant='mean' attribution."""
    import tf_keras_vis.saliency as tkv
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    _, keras_model = pair
    samples, level, seed = 6, 0.2, 3

    def our_noise(loc, scale, size):
        shape = size[2:]
        draws = np.stack([np.random.default_rng([seed, s]).standard_normal(shape, dtype=np.float32)
                          for s in range(size[0])])
        return loc + np.asarray(scale) * draws[:, None]

    monkeypatch.setattr(tkv.np.random, "normal", our_noise)
    theirs = tkv.Saliency(keras_model, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore([4, 7]), inputs, smooth_samples=samples, smooth_noise=level, gradient_modifier=None,
        keepdims=True, normalize_map=False)
    monkeypatch.undo()
    ours = gradsight.attribute(keras_model, inputs, method="smoothgrad", target=[4, 7], n_samples=samples,
                               noise_level=level, seed=seed)
    np.testing.assert_allclose(ours.attribution, theirs, rtol=1e-3, atol=1e-5 * np.abs(theirs).max())


def test_grad_cam_equals_tf_keras_vis(pair, inputs):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    _, keras_model = pair
    theirs = Gradcam(keras_model, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore([1, 2]), inputs, penultimate_layer="L5", expand_cam=False, normalize_cam=False)
    ours = gradsight.attribute(keras_model, inputs, method="grad_cam", target=[1, 2], layer="L5")
    np.testing.assert_allclose(ours.layer_maps, theirs, rtol=1e-4, atol=1e-6 * np.abs(theirs).max())


def test_grad_cam_pp_matches_tf_keras_vis_once_its_alpha_normalisation_is_applied(pair, inputs):
    """tf-keras-vis divides the Grad-CAM++ alphas by their sum over positions (not in the paper; the paper's form
    is ours and pytorch-grad-cam's). Applying that one step to our activations and gradients gives its map."""
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from gradsight.adapters.discovery import adapter_for

    _, keras_model = pair
    theirs = GradcamPlusPlus(keras_model, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore([1, 2]), inputs, penultimate_layer="L5", expand_cam=False, normalize_cam=False)
    layer = adapter_for(keras_model).layer_gradient(keras_model, "L5", inputs, [1, 2])
    a, g = layer.activations.astype(np.float64), layer.gradient.astype(np.float64)
    scores = np.exp(layer.logits[np.arange(2), [1, 2]])[:, None, None, None]
    denominator = 2 * g ** 2 + g ** 3 * a.sum(axis=(1, 2), keepdims=True)
    alpha = np.divide(g ** 2, denominator, out=np.zeros_like(g), where=g ** 2 != 0)
    total = alpha.sum(axis=(1, 2), keepdims=True)
    alpha = alpha / np.where(total == 0, 1, total)  # tf-keras-vis' extra normalisation
    weights = (alpha * np.maximum(scores * g, 0)).sum(axis=(1, 2))
    expected = np.maximum(np.einsum("nhwc,nc->nhw", a, weights), 0)
    np.testing.assert_allclose(theirs, expected, rtol=1e-3, atol=1e-6 * expected.max())
    # And ours is the paper's form on the same activations and gradients.
    ours = gradsight.attribute(keras_model, inputs, method="grad_cam_pp", target=[1, 2], layer="L5")
    alpha = np.divide(g ** 2, denominator, out=np.zeros_like(g), where=denominator != 0)
    paper = np.maximum(np.einsum("nhwc,nc->nhw", a, (alpha * np.maximum(g, 0)).sum(axis=(1, 2))), 0)
    np.testing.assert_allclose(ours.layer_maps, paper, rtol=1e-4, atol=1e-6 * paper.max())
