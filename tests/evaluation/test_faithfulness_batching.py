"""Faithfulness curves do not depend on how the forward passes are chunked, nor on the other images of a call."""

from __future__ import annotations

import numpy as np
import pytest
from evaluation_models import normal_inputs
from testkit import small_cnn

from gradsight.adapters.discovery import adapter_for
from gradsight.errors import BadInputError
from gradsight.evaluation.faithfulness import curve, faithfulness, step_sizes


@pytest.mark.parametrize("metric", ["deletion", "insertion"])
def test_chunked_equals_unchunked(metric):
    net, x = small_cnn(seed=2), normal_inputs(2, 16, seed=4)
    one = faithfulness(net, x, method="gradient", metric=metric, steps=40, batch_size=1)
    many = faithfulness(net, x, method="gradient", metric=metric, steps=40, batch_size=32)
    uneven = faithfulness(net, x, method="gradient", metric=metric, steps=40, batch_size=7)
    for other in (many, uneven):
        np.testing.assert_allclose(other.curves, one.curves, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(other.random_curves, one.random_curves, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(other.auc, one.auc, rtol=1e-5)
    # the curve really moves: deleting pixels of a random CNN's input changes its probabilities
    assert np.ptp(one.curves[0]) > 1e-3


def test_an_images_curves_do_not_depend_on_the_other_images_in_the_call():
    net, x = small_cnn(seed=2), normal_inputs(3, 16, seed=4)
    together = faithfulness(net, x, method="gradient", metric="deletion", steps=32, seed=3)
    for i in range(3):
        alone = faithfulness(net, x[i:i + 1], method="gradient", metric="deletion", steps=32, seed=3)
        np.testing.assert_allclose(alone.curves[0], together.curves[i], rtol=1e-5, atol=1e-7)
        # the random floor too: its pixel order must not depend on the image's place in the batch
        np.testing.assert_allclose(alone.random_curves[0], together.random_curves[i], rtol=1e-5, atol=1e-7)
    other_seed = faithfulness(net, x[:1], method="gradient", metric="deletion", steps=32, seed=4)
    assert not np.allclose(other_seed.random_curves[0], together.random_curves[0])


def test_the_random_floor_is_the_same_for_every_method():
    net, x = small_cnn(seed=2), normal_inputs(1, 16, seed=4)
    a = faithfulness(net, x, method="gradient", metric="insertion", steps=16)
    b = faithfulness(net, x, method="grad_cam", metric="insertion", steps=16)
    np.testing.assert_array_equal(a.random_curves, b.random_curves)
    assert not np.allclose(a.curves, b.curves)


def loop_of_single_passes(net, start, end, order, counts, target):
    """The oracle: one perturbed image built by torch indexing, one plain forward pass, one probability."""
    import torch

    x0 = torch.from_numpy(start.transpose(2, 0, 1).copy())[None]
    x1 = torch.from_numpy(end.transpose(2, 0, 1).copy())[None]
    rows, cols = np.unravel_index(order, start.shape[:2])
    values = []
    with torch.no_grad():
        for count in counts:
            x = x0.clone()
            x[0, :, rows[:count], cols[:count]] = x1[0, :, rows[:count], cols[:count]]
            values.append(float(torch.softmax(net(x).double(), dim=1)[0, target]))
    return np.array(values)


@pytest.mark.parametrize("fast", [True, False])
def test_batched_curves_equal_a_loop_of_single_forward_passes(fast):
    net, x = small_cnn(seed=2), normal_inputs(1, 16, seed=4)  # BatchNorm: the fast path folds it
    adapter = adapter_for(net)
    order = np.random.default_rng(5).permutation(16 * 16)
    counts = step_sizes(16 * 16, 40)
    fill = np.zeros_like(x[0])
    expected = loop_of_single_passes(net, x[0], fill, order, counts, 3)
    assert np.ptp(expected) > 1e-3
    for batch_size in (1, 7, 64):
        got = curve(adapter, net, x[0], fill, order, counts, 3, "prob", batch_size, fast)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # inserting: from the fill back to the image, the same pixels in the same order
    back = curve(adapter, net, fill, x[0], order, counts, 3, "prob", 7, fast)
    np.testing.assert_allclose(back, loop_of_single_passes(net, fill, x[0], order, counts, 3), rtol=0, atol=1e-5)


def test_fast_and_plain_faithfulness_agree_and_are_recorded():
    net, x = small_cnn(seed=2), normal_inputs(2, 16, seed=4)
    fast = faithfulness(net, x, method="gradient", metric="insertion", steps=24)
    plain = faithfulness(net, x, method="gradient", metric="insertion", steps=24, fast=False)
    assert fast.options["fast"] is True and plain.options["fast"] is False
    np.testing.assert_allclose(fast.random_curves, plain.random_curves, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast.curves, plain.curves, rtol=0, atol=1e-5)


def test_pixel_counts_must_not_decrease():
    net, x = small_cnn(seed=2), normal_inputs(1, 16, seed=4)
    with pytest.raises(BadInputError, match="do not decrease"):
        curve(adapter_for(net), net, x[0], x[0] * 0, np.arange(256), np.array([0, 10, 5]), 0, "prob", 4)


def test_the_fast_forward_path_of_the_embedded_model_is_within_1e_5_of_the_plain_one(embedded):
    from gradsight.inputs import prepare_inputs

    adapter = adapter_for(embedded.module)
    photo = prepare_inputs(None, embedded.preprocess).arrays
    rng = np.random.default_rng(0)
    # the photo, half its pixels deleted (twice), its RISE blur's start (zeros) and noise
    x = np.concatenate([photo, photo * (rng.random((2, 224, 224, 1)) > 0.5), np.zeros_like(photo),
                        rng.standard_normal(photo.shape)]).astype(np.float32)
    plain = adapter.predict(embedded.module, x, 4)
    fast = adapter.predict(embedded.module, x, 4, fast=True)
    assert np.abs(plain).max() > 5  # real logits, not a degenerate output
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(fast.argmax(axis=1), plain.argmax(axis=1))


def test_the_folded_copy_built_by_a_fast_prediction_still_serves_gradients():
    """predict(fast=True) may be the first to build the model's cached folded copy (outside inference mode);
    the gradient fast path reuses that copy and must give the plain model's maps."""
    import gradsight

    net, x = small_cnn(seed=6), normal_inputs(2, 16, seed=1)
    logits = adapter_for(net).predict(net, x, 2, fast=True)  # first use of this model: builds the copy
    folded = gradsight.attribute(net, x, method="gradient", fast=True)
    plain = gradsight.attribute(net, x, method="gradient", fast=False)
    np.testing.assert_allclose(folded.logits, logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(folded.maps, plain.maps, rtol=0, atol=1e-5 * np.abs(plain.maps).max())
