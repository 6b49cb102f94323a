"""Every method leaves the user's Keras model and arrays exactly as they were, also when it fails: weights bit for
bit (BatchNorm's moving statistics included), trainable flags, each layer's activation function (guided backprop
and deconvnet work on a copy), the layers themselves; and it runs the model in inference mode (Dropout off,
BatchNorm on its moving statistics), so that two calls give the same map."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import gradsight  # noqa: E402
from gradsight.methods.attribute import attribute  # noqa: E402

FAST_OPTIONS = {
    "gradient": {}, "input_x_gradient": {}, "integrated_gradients": {"n_steps": 3, "internal_batch_size": 2},
    "smoothgrad": {"n_samples": 3, "internal_batch_size": 2}, "guided_backprop": {}, "deconvnet": {},
    "grad_cam": {}, "grad_cam_pp": {}, "layer_cam": {}, "occlusion": {"window": 8, "stride": 8},
    "score_cam": {"internal_batch_size": 5},
}


def stateful_model(activation: str = "relu") -> keras.Model:
    """Conv -> BatchNorm -> ReLU layer -> conv with its own ReLU -> Dropout -> pool -> dense, with BatchNorm
    statistics far from their initial values (a training-mode pass would move them)."""
    keras.utils.set_random_seed(3)
    x = inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation(activation, name="act")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation=activation, name="conv2")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="head")(x))
    bn = model.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.moving_mean.assign(rng.uniform(-0.5, 0.5, 8).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 8).astype(np.float32))
    model.get_layer("conv1").trainable = False  # a mix of flags to keep
    return model


def snapshot(model: keras.Model) -> dict:
    return {
        "weights": [np.array(w) for w in model.get_weights()],
        "trainable": [layer.trainable for layer in model.layers],
        "activations": [getattr(layer, "activation", None) for layer in model.layers],
        "layers": list(model.layers),
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["trainable"] == after["trainable"]
    assert all(a is b for a, b in zip(before["activations"], after["activations"], strict=True))
    assert all(a is b for a, b in zip(before["layers"], after["layers"], strict=True))
    for a, b in zip(before["weights"], after["weights"], strict=True):
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.fixture(scope="module")
def model():
    return stateful_model()


@pytest.mark.parametrize("method", sorted(FAST_OPTIONS))
def test_model_and_arrays_untouched_and_inference_mode_used(model, method):
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    x_before = x.copy()
    before = snapshot(model)
    first = attribute(model, x, method=method, target=[1, 3], **FAST_OPTIONS[method])
    second = attribute(model, x, method=method, target=[1, 3], **FAST_OPTIONS[method])
    assert_same(before, snapshot(model))
    assert np.array_equal(x, x_before)
    np.testing.assert_array_equal(first.maps, second.maps)  # Dropout off: the same map twice
    np.testing.assert_allclose(first.logits, np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make,options,error,match", [
    (lambda: stateful_model(), dict(method="grad_cam", layer="head"), gradsight.BadInputError, "spatial"),
    (lambda: stateful_model(), dict(method="grad_cam_pp", layer="pool"), gradsight.BadInputError, "spatial"),
    (lambda: stateful_model("swish"), dict(method="guided_backprop"), gradsight.BadInputError, "swish|silu"),
    (lambda: stateful_model(), dict(method="integrated_gradients", baseline=np.zeros((8, 8, 3), np.float32)),
     gradsight.BadInputError, "shape"),
], ids=["grad_cam on a dense layer", "grad_cam_pp on the pooled vector", "guided on swish", "IG baseline shape"])
def test_state_kept_when_a_method_fails(make, options, error, match):
    net = make()
    x = np.random.default_rng(2).normal(size=(1, 16, 16, 3)).astype(np.float32)
    x_before = x.copy()
    before = snapshot(net)
    with pytest.raises(error, match=match):
        attribute(net, x, **options)
    assert_same(before, snapshot(net))
    assert np.array_equal(x, x_before)
