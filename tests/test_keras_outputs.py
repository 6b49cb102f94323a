"""What a Keras model's output is read as: the logits behind a final softmax in any of its forms (checked against
a GradientTape on the logits by hand), probabilities said to be probabilities, inputs the model cannot take
refused in one line, and subclassed models."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import gradsight  # noqa: E402
from gradsight.adapters.common import rows_are_probabilities  # noqa: E402
from gradsight.cli import main  # noqa: E402

K = keras.layers


def classifier(head, seed: int = 0):
    """(model ending in ``head(logits)``, the same layers cut at the logits) on a 12 x 12 x 3 input."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((12, 12, 3))
    h = K.GlobalAveragePooling2D()(K.Conv2D(6, 3, activation="relu")(x))
    z = K.Dense(5, name="logits", kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(h)
    return keras.Model(x, head(z)), keras.Model(x, z)


def tape(model, x, targets, score=lambda out: out):
    """d score(model(x))[target] / dx by hand."""
    xt = tf.constant(x)
    with tf.GradientTape() as t:
        t.watch(xt)
        out = score(model(xt, training=False))
        total = tf.reduce_sum(tf.gather(out, targets, axis=1, batch_dims=1))
    return np.asarray(out), np.asarray(t.gradient(total, xt))


@pytest.fixture(scope="module")
def batch():
    """Normalised model input (negative values: it cannot be read as a photo)."""
    return np.random.default_rng(0).standard_normal((3, 12, 12, 3), dtype=np.float32)


SOFTMAX_HEADS = {
    "Lambda(ops.softmax)": lambda z: K.Lambda(lambda t: keras.ops.softmax(t), name="probs")(z),
    "ops.softmax": lambda z: keras.ops.softmax(z),
    "Activation('softmax')": lambda z: K.Activation("softmax")(z),
    "Activation(activations.softmax)": lambda z: K.Activation(keras.activations.softmax)(z),
    "Softmax layer": lambda z: K.Softmax()(z),
    "Lambda(exp / sum exp)": lambda z: K.Lambda(lambda t: keras.ops.exp(t) / keras.ops.sum(
        keras.ops.exp(t), axis=-1, keepdims=True))(z),
}


@pytest.mark.parametrize("head", SOFTMAX_HEADS, ids=list(SOFTMAX_HEADS))
@pytest.mark.parametrize("fast", [True, False])
def test_a_final_softmax_in_any_form_is_stepped_over(head, fast, batch):
    model, logits_model = classifier(SOFTMAX_HEADS[head])
    logits, _ = tape(logits_model, batch, [0, 0, 0])
    assert not rows_are_probabilities(logits)  # the test means something
    predicted = logits.argmax(axis=1)
    _, reference = tape(logits_model, batch, predicted)
    result = gradsight.saliency(model, batch, fast=fast)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-5, atol=1e-5)
    assert result.targets.tolist() == predicted.tolist() and result.score == "logit"
    np.testing.assert_allclose(result.gradient, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())
    probabilities = np.asarray(model(batch, training=False))
    top = result.top_k(0, 1)[0]
    assert top[0] == predicted[0] and abs(top[2] - probabilities[0].max()) < 1e-5


def test_softmax_after_a_dense_softmax_is_not_misread(batch):
    # The model's output is the last operation's, not the last layer's: a Dense(softmax) followed by another
    # operation must not be stepped over as if it were the output.
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 3))
    h = K.GlobalAveragePooling2D()(K.Conv2D(6, 3)(x))
    probs = K.Dense(5, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(h)
    squared = keras.ops.square(probs)
    model = keras.Model(x, squared / keras.ops.sum(squared, axis=1, keepdims=True))  # softmax at temperature 1/2
    with pytest.raises(gradsight.BadInputError, match="rows that sum to 1"):
        gradsight.saliency(model, batch)


HIDDEN_SOFTMAX = {
    # softmax written as several operations: no single operation to step over
    "exp / sum": lambda z: keras.ops.exp(z) / keras.ops.sum(keras.ops.exp(z), axis=1, keepdims=True),
    # a softmax at another temperature: the Lambda's output is not softmax(its input)
    "Lambda(softmax(2 t))": lambda z: K.Lambda(lambda t: keras.ops.softmax(2.0 * t))(z),
}


@pytest.mark.parametrize("head", HIDDEN_SOFTMAX, ids=list(HIDDEN_SOFTMAX))
def test_probabilities_without_a_softmax_to_step_over_are_never_called_logits(head, batch, capsys):
    model, _ = classifier(HIDDEN_SOFTMAX[head])
    for fast in (True, False):
        with pytest.raises(gradsight.BadInputError) as info:
            gradsight.saliency(model, batch, fast=fast)
        message = str(info.value)
        assert message.startswith("model output: expected class logits (pre-softmax scores), got rows that sum "
                                  "to 1 (probabilities)"), message
        assert "score='prob'" in message
    probabilities = np.asarray(model(batch, training=False))
    predicted = probabilities.argmax(axis=1)
    for score, how in [("prob", lambda p: p), ("logprob", lambda p: tf.math.log(p))]:
        for fast in (True, False):
            result = gradsight.saliency(model, batch, score=score, fast=fast)
            _, reference = tape(model, batch, predicted, how)
            assert result.targets.tolist() == predicted.tolist()
            np.testing.assert_allclose(result.gradient, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())
            # the logits reported are log(probabilities): their softmax gives the model's probabilities back
            np.testing.assert_allclose(result.probabilities, probabilities, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(result.logits, np.log(probabilities), rtol=1e-5, atol=1e-6)


def test_an_rgb_photo_given_to_the_greyscale_seed_cnn_is_one_clear_error(tmp_path, capsys, ouzel_path):
    model = gradsight.load_model("keras:seed-cnn")
    with pytest.raises(gradsight.BadInputError) as info:
        gradsight.saliency(model, ouzel_path)
    assert "1 channel" in str(info.value) and "128" in str(info.value), info.value
    # the adapter itself refuses what the model's Input cannot take (arrays reach it unchecked by the photo path)
    from gradsight.adapters.keras.adapter import KerasAdapter

    for shape, got in [((1, 128, 128, 3), "3 channels at 128 x 128"), ((2, 64, 64, 1), "1 channel at 64 x 64"),
                       ((1, 128, 128), "shape (1, 128, 128)")]:
        with pytest.raises(gradsight.BadInputError) as info:
            KerasAdapter().score_gradient(model.module, np.zeros(shape, np.float32), [None] * shape[0])
        message = str(info.value)
        assert message.startswith("model input: expected ") and got in message and "128" in message, message
        assert "\n" not in message
    code = main(["saliency", str(ouzel_path), "--model", "keras:seed-cnn", "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "1 channel" in err, err
    assert not (tmp_path / "o").exists()


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = K.Conv2D(4, 3, activation="relu", name="conv")
        self.pool = K.GlobalAveragePooling2D()
        self.dense = K.Dense(5, name="dense")

    def call(self, x):
        return self.dense(self.pool(self.conv(x)))


def test_subclassed_model_already_called(batch):
    keras.utils.set_random_seed(0)
    model = Subclassed()
    model(batch[:1])
    for fast in (True, False):
        result = gradsight.saliency(model, batch, fast=fast)
        logits, reference = tape(model, batch, np.asarray(model(batch)).argmax(axis=1))
        np.testing.assert_allclose(result.logits, logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.gradient, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())
    with pytest.raises(gradsight.BadInputError, match="0..4"):
        gradsight.saliency(model, batch, target=5)
    for call in (lambda: gradsight.node_gradient(model, "conv", (0, 0, 0), batch[0]),
                 lambda: gradsight.receptive_field(model, (12, 12))):
        with pytest.raises(gradsight.BadInputError) as info:
            call()
        message = str(info.value)
        assert "subclassed" in message and "Subclassed" in message and "call it" not in message.lower(), message
        assert "functional" in message


def test_keras_model_from_a_python_factory(tmp_path, monkeypatch):
    (tmp_path / "gs_keras_factory.py").write_text(
        "import keras\n\n"
        "def build():\n"
        "    x = keras.Input((32, 32, 2))\n"
        "    return keras.Model(x, keras.layers.Conv2D(3, 5, strides=2, name='c')(x))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    report = gradsight.receptive_field("gs_keras_factory:build")
    assert report.input_size == (32, 32) and report["c"].size == (5, 5) and report["c"].stride == (2, 2)
