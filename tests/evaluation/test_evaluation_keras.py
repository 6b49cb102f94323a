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


def scaled_keras_model():
    """Normalization (statistics, no initializer) -> Conv2D -> a LayerScale-like layer whose weight has no
    ``*_initializer`` attribute (as keras.applications ConvNeXt's LayerScale) -> pooling -> Dense."""
    import keras

    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.gamma = self.add_weight(shape=(input_shape[-1],), name="gamma",
                                         initializer=keras.initializers.Constant(0.5))

        def call(self, x):
            return x * self.gamma

    inputs = keras.Input((12, 12, 3))
    norm = keras.layers.Normalization(axis=-1, name="norm")  # statistics as weights, as keras.applications'
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(norm(inputs))
    x = Scale(name="scale")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(x))
    model.get_layer("scale").gamma.assign(np.array([0.5, 1.0, 1.5, 2.0], np.float32))
    statistics = {"mean": [0.1, 0.2, 0.3], "variance": [1.0, 2.0, 4.0], "count": 10}
    for weight in norm.weights:  # adapted statistics, not the ones the layer starts from
        weight.assign(np.asarray(statistics[weight.name], weight.dtype).reshape(weight.shape))
    norm.finalize_state()
    return model


def test_keras_weights_without_an_initializer_are_kept_bit_for_bit_and_reported():
    import warnings

    from gradsight.adapters.keras.modifiers import kept_parameters, modified_copy, parameter_blocks
    from gradsight.errors import BadInputError
    from gradsight.evaluation.sanity import OUTSIDE

    model = scaled_keras_model()
    assert parameter_blocks(model) == ["dense", "conv"]  # norm and scale have nothing to draw again
    assert kept_parameters(model, ["dense", "conv", "scale"]) == {"scale": ["scale/gamma"]}
    assert kept_parameters(model, ["dense", "conv"], outside=True) == {
        "": ["norm/mean", "norm/variance", "norm/count", "scale/gamma"]}
    with pytest.raises(BadInputError, match=r"'scale'.*scale/gamma"):  # named, but nothing in it can be drawn
        modified_copy(model, "reinit", layers=["dense", "scale"], seed=2)
    copy = modified_copy(model, "reinit", layers=["dense", "conv"], seed=2)
    before = {w.path: np.asarray(w) for w in model.weights}
    after = {w.path: np.asarray(w) for w in copy.weights}
    for path in ("scale/gamma", "norm/mean", "norm/variance"):
        assert before[path].tobytes() == after[path].tobytes(), path
    for path in ("conv/kernel", "dense/kernel"):
        assert not np.array_equal(before[path], after[path]), path
    x = normal_inputs(1, 12, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = sanity_check(model, x, methods=["gradient"], seed=2)
    assert sum("scale/gamma" in str(w.message) for w in caught) == 1
    assert report.blocks == ("dense", "conv")
    assert report.kept == {OUTSIDE: ("norm/mean", "norm/variance", "norm/count", "scale/gamma")}
    assert report.as_dict()["kept_parameters"] == {OUTSIDE: ["norm/mean", "norm/variance", "norm/count",
                                                             "scale/gamma"]}


def test_keras_blocks_get_the_same_weights_in_cascade_and_independent_copies():
    from gradsight.adapters.keras.modifiers import modified_copy, parameter_blocks

    model = scaled_keras_model()
    blocks = parameter_blocks(model)
    for k, block in enumerate(blocks):
        alone = {w.path: np.asarray(w) for w in modified_copy(model, "reinit", layers=[block], seed=3).weights}
        cascade = {w.path: np.asarray(w) for w in modified_copy(model, "reinit", layers=blocks[:k + 1], seed=3).weights}
        other = {w.path: np.asarray(w) for w in modified_copy(model, "reinit", layers=[block], seed=4).weights}
        kernel = f"{block}/kernel"
        np.testing.assert_array_equal(cascade[kernel], alone[kernel])
        assert not np.array_equal(other[kernel], alone[kernel])
