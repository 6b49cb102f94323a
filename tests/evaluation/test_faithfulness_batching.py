"""Faithfulness curves do not depend on how the forward passes are chunked, nor on the other images of a call."""

from __future__ import annotations

import numpy as np
import pytest
from evaluation_models import normal_inputs
from testkit import small_cnn

from gradsight.evaluation.faithfulness import faithfulness


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
