"""What the Keras adapter keeps per model: compiled passes, partial models and field reports never keep a dropped
model alive, and a field report is reused only while the model's geometry is the same."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import gradsight  # noqa: E402
from gradsight.adapters.discovery import adapter_for  # noqa: E402

L = keras.layers


def functional(head: str):
    """A small classifier on 12 x 12 x 3 ending in logits or in a softmax layer; seeded, so that the units the
    tests read are the same (alive) ones on every run."""
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 3))
    h = L.Conv2D(4, 3, strides=2, activation="relu", name="conv")(x)
    z = L.Dense(5, name="logits")(L.GlobalAveragePooling2D()(h))
    return keras.Model(x, L.Softmax()(z) if head == "softmax" else z)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.dense = L.Conv2D(4, 3, activation="relu"), L.GlobalAveragePooling2D(), L.Dense(5)

    def call(self, x):
        return self.dense(self.pool(self.conv(x)))


def exercise(model, x) -> None:
    """Every call that caches something per model."""
    adapter = adapter_for(model)
    for fast in (True, False):
        for score in ("logit", "prob"):
            adapter.score_gradient(model, x, [None] * len(x), score, fast)
    adapter.predict(model, x, batch_size=1)
    if not isinstance(model, Subclassed):
        adapter.layer_gradient(model, "conv", x, [0, 1])
        adapter.unit_gradients(model, "conv", np.array([[1, 2, 3]]), x[0])
        adapter.support_map(model, "conv", (2, 2), x)
        gradsight.receptive_field(model, (12, 12))


@pytest.mark.parametrize("kind", ["logits", "softmax", "subclassed"])
def test_a_model_with_cached_passes_is_garbage_collected(kind):
    x = np.random.default_rng(0).standard_normal((2, 12, 12, 3), dtype=np.float32)
    model = Subclassed() if kind == "subclassed" else functional(kind)
    model(x[:1])
    exercise(model, x)
    exercise(model, x)  # the second round runs from the caches
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None, "a per-model cache keeps the model alive"


def test_field_reports_follow_a_layer_edited_in_place():
    model = functional("logits")
    x = np.random.default_rng(1).standard_normal((1, 12, 12, 3), dtype=np.float32)
    assert gradsight.receptive_field(model, (12, 12))["conv"].stride == (2, 2)
    before = model(x)
    model.get_layer("conv").strides = (1, 1)  # the model now computes a 10 x 10 map
    assert tuple(model.get_layer("conv")(x).shape[1:3]) == (10, 10) and before.shape == model(x).shape
    report = gradsight.receptive_field(model, (12, 12))
    assert report["conv"].stride == (1, 1) and report["conv"].output_shape[1:] == (10, 10)


def test_structure_key_ignores_weight_values_and_sees_configs():
    model = functional("softmax")
    adapter = adapter_for(model)
    key = adapter.structure_key(model)
    model.set_weights([w * 2 + 1 for w in model.get_weights()])
    assert adapter.structure_key(model) == key
    model.get_layer("conv").padding = "same"
    assert adapter.structure_key(model) != key


def test_compiled_passes_read_the_weights_the_model_has_now():
    model = functional("softmax")
    adapter = adapter_for(model)
    x = np.random.default_rng(2).standard_normal((2, 12, 12, 3), dtype=np.float32)
    units = np.array([[0, 0, 1], [2, 3, 3]])
    before = adapter.score_gradient(model, x, [1, 2], fast=True)
    before_units = adapter.unit_gradients(model, "conv", units, x[0], fast=True)[0]
    model.set_weights([w * 2 + 0.1 for w in model.get_weights()])
    gradient = adapter.score_gradient(model, x, [1, 2], fast=False).gradient
    np.testing.assert_allclose(adapter.score_gradient(model, x, [1, 2], fast=True).gradient, gradient,
                               rtol=1e-5, atol=1e-6 * np.abs(gradient).max())
    unit = adapter.unit_gradients(model, "conv", units, x[0], fast=False)[0]
    np.testing.assert_allclose(adapter.unit_gradients(model, "conv", units, x[0], fast=True)[0], unit,
                               rtol=1e-5, atol=1e-6 * np.abs(unit).max())
    assert not np.allclose(gradient, before.gradient) and not np.allclose(unit, before_units)  # new numbers


def test_passes_are_rebuilt_when_a_layer_is_edited_in_place():
    # tf-keras-vis' ReplaceToLinear(clone=False) edits the last layer so: a pass compiled before the edit would
    # still compute the old activation.
    x = np.random.default_rng(3).standard_normal((2, 12, 12, 3), dtype=np.float32)
    model = functional("logits")
    adapter = adapter_for(model)
    units = np.array([(r, c, ch) for r in range(5) for c in range(5) for ch in range(4)])  # all of the 5 x 5 x 4 map
    before = adapter.score_gradient(model, x, [1, 2], fast=True).gradient
    before_units = adapter.unit_gradients(model, "conv", units, x[0], fast=True)[0]
    model.get_layer("conv").activation = keras.activations.linear
    gradient = adapter.score_gradient(model, x, [1, 2], fast=False).gradient
    unit = adapter.unit_gradients(model, "conv", units, x[0], fast=False)[0]
    assert not np.allclose(gradient, before) and not np.allclose(unit, before_units)  # the edit matters
    np.testing.assert_allclose(adapter.score_gradient(model, x, [1, 2], fast=True).gradient, gradient,
                               rtol=1e-5, atol=1e-6 * np.abs(gradient).max())
    np.testing.assert_allclose(adapter.unit_gradients(model, "conv", units, x[0], fast=True)[0], unit,
                               rtol=1e-5, atol=1e-6 * np.abs(unit).max())
    # A softmax given to the last Dense in place is then stepped over: the same logits and logit gradients.
    logits = adapter.predict(model, x)
    model.get_layer("logits").activation = keras.activations.softmax
    assert np.allclose(np.asarray(model(x)).sum(axis=1), 1.0)
    np.testing.assert_allclose(adapter.predict(model, x), logits, rtol=1e-5, atol=1e-6)
    stepped = adapter.score_gradient(model, x, [1, 2], fast=True)
    np.testing.assert_allclose(stepped.logits, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stepped.gradient, gradient, rtol=1e-5, atol=1e-6 * np.abs(gradient).max())
