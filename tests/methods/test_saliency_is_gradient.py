"""``gradsight.saliency`` is the ``gradient`` method: its SaliencyResult is an AttributionResult equal to
``gradsight.attribute(method="gradient")``'s, and every renderer of attributions takes it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from testkit import TINY_PREP, tiny_model

import gradsight
from gradsight.inputs import prepare_inputs
from gradsight.methods.saliency import saliency_batches
from gradsight.results import AttributionResult, SaliencyResult


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    photo = Image.open(gradsight.example_image_path()).convert("RGB")
    paths = [folder / "a.png", folder / "b.png", folder / "c.png"]
    photo.save(paths[0])
    photo.crop((100, 50, 300, 250)).save(paths[1])
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(paths[2])
    return paths


def _by_hand(module: torch.nn.Module, x: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray]:
    """d logit[target] / d input with autograd on the plain model: (gradient NHWC, logits)."""
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).clone().requires_grad_(True)
    logits = module(xt)
    logits[torch.arange(len(x)), torch.as_tensor(targets)].sum().backward()
    return xt.grad.permute(0, 2, 3, 1).numpy(), logits.detach().numpy()


@pytest.mark.parametrize("fast", [False, True])
def test_saliency_equals_attribute_gradient_and_the_gradient_by_hand(photos, fast):
    model = tiny_model()
    result = gradsight.saliency(model, photos, target=[None, 3, None], fast=fast, batch_size=2)
    other = gradsight.attribute(model, photos, method="gradient", target=[None, 3, None], fast=fast, batch_size=2)
    assert type(result) is SaliencyResult and isinstance(result, AttributionResult)
    assert type(other) is AttributionResult
    for name in ("maps", "attribution", "targets", "logits"):
        np.testing.assert_array_equal(getattr(result, name), getattr(other, name), err_msg=name)
    assert (result.method, result.options, result.display, result.framework, result.score, result.fast) == \
           (other.method, other.options, other.display, other.framework, other.score, other.fast) == \
           ("gradient", {}, "max_abs", "torch", "logit", fast)
    assert result.sources == other.sources and result.model_name == other.model_name == "tiny-cnn"
    # the old names are the new fields
    assert result.saliency is result.maps and result.gradient is result.attribution
    # the oracle: autograd on the unmodified model (fast folds BatchNorm: equal to rounding)
    x = prepare_inputs([str(p) for p in photos], TINY_PREP).arrays
    gradient, logits = _by_hand(model.module, x, result.targets)
    tol = dict(rtol=1e-4, atol=1e-5 * np.abs(gradient).max()) if fast else dict(rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(result.gradient, gradient, **tol)
    np.testing.assert_allclose(result.saliency, np.abs(gradient).max(axis=-1), **tol)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-5, atol=1e-5)
    assert result.targets[1] == 3 and result.targets[0] == logits[0].argmax()


def test_saliency_batches_yield_saliency_results_that_join_to_the_whole(photos):
    model = tiny_model()
    whole = gradsight.saliency(model, photos, batch_size=2)  # the same batches: the same float rounding
    parts = list(saliency_batches(model, photos, batch_size=2))
    assert [type(p) for p in parts] == [SaliencyResult, SaliencyResult] and [len(p) for p in parts] == [2, 1]
    np.testing.assert_array_equal(np.concatenate([p.gradient for p in parts]), whole.gradient)
    np.testing.assert_array_equal(np.concatenate([p.saliency for p in parts]), whole.saliency)


def test_both_render_through_save_attributions_to_the_same_files(photos, tmp_path):
    model = tiny_model()
    result = gradsight.saliency(model, photos[:2])
    other = gradsight.attribute(model, photos[:2], method="gradient")
    a = gradsight.save_attributions([result], tmp_path / "saliency")
    b = gradsight.save_attributions([other], tmp_path / "attribute")
    assert [p.name for p in a] == [p.name for p in b] == ["a_gradient.png", "a_gradient.npy", "a_gradient.json",
                                                          "b_gradient.png", "b_gradient.npy", "b_gradient.json"]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    np.testing.assert_array_equal(np.load(tmp_path / "saliency" / "b_gradient.npy"), result.saliency[1])
    record = json.loads((tmp_path / "saliency" / "a_gradient.json").read_text())
    assert record["method"] == "gradient" and record["options"] == {} and record["score"] == "logit"
    assert record["target"] == int(result.targets[0]) and record["map_max"] == float(result.saliency[0].max())
    # the comparison figure takes both kinds side by side, and save_saliency still takes a SaliencyResult
    figure = gradsight.attribution_figure([result, other])
    assert [ax.get_title() for ax in figure.axes[1:]] == ["gradient", "gradient"]
    written = gradsight.save_saliency(result, tmp_path / "old")
    np.testing.assert_array_equal(np.load(tmp_path / "old" / "a_saliency.npy"), result.saliency[0])
    assert sorted(p.name for p in written)[:4] == ["a.json", "a_figure.png", "a_saliency.npy", "a_saliency.png"]
