"""Both frameworks: the same seed CNN in PyTorch and Keras gives the same faithfulness curves, and a Keras
model is randomised on a copy, with its own initialisers."""

from __future__ import annotations

import numpy as np
import pytest
from evaluation_models import normal_inputs

import gradsight
from gradsight.evaluation.faithfulness import faithfulness
from gradsight.evaluation.sanity import sanity_check

pytestmark = pytest.mark.slow  # imports TensorFlow


@pytest.fixture(scope="module")
def twins():
    pytest.importorskip("keras")
    from gradsight.adapters.keras.models import copy_seed_weights, keras_seed_cnn

    torch_net, keras_model = gradsight.seed_cnn("same"), keras_seed_cnn()
    copy_seed_weights(torch_net, keras_model)
    return torch_net, keras_model


@pytest.mark.parametrize("metric", ["deletion", "insertion"])
def test_the_same_model_gives_the_same_curves_in_both_frameworks(twins, metric):
    torch_net, keras_model = twins
    x = normal_inputs(2, 128, channels=1, seed=3)
    a = faithfulness(torch_net, x, method="gradient", metric=metric, steps=32)
    b = faithfulness(keras_model, x, method="gradient", metric=metric, steps=32)
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_allclose(b.curves, a.curves, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b.random_curves, a.random_curves, rtol=1e-4, atol=1e-6)
    assert np.ptp(a.curves) > 1e-3


def test_a_keras_model_is_randomised_on_a_copy(twins):
    _, keras_model = twins
    before = [w.copy() for w in keras_model.get_weights()]
    x = normal_inputs(1, 128, channels=1, seed=4)
    report = sanity_check(keras_model, x, methods=["gradient"], seed=1)
    assert report.blocks == ("dense", "L6", "L5", "L4", "L3", "L2", "L1")
    assert report.scores["gradient"]["spearman_abs"][-1, 0] < 0.5
    after = keras_model.get_weights()
    assert all(np.array_equal(w0, w1) for w0, w1 in zip(before, after))
