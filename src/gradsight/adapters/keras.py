"""Keras 3 adapter (TensorFlow backend): the same services as the PyTorch adapter, for ``keras.Model``.

Example:
    >>> import keras, gradsight                                                      # doctest: +SKIP
    >>> model = keras.applications.ResNet50(weights=None)                            # doctest: +SKIP
    >>> gradsight.saliency(model, x).saliency.shape                                  # doctest: +SKIP
    (1, 224, 224)

Keras works channels-last, which is gradsight's boundary layout, so arrays pass as they are. Models are always
called with ``training=False`` (BatchNorm moving statistics, no dropout); nothing on the model is changed.
A model ending in a softmax (a ``softmax`` activation on its last layer, or a Softmax/Activation layer) is
explained through its logits, the softmax's input.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

from ..errors import BadInputError, UnknownNameError
from .base import ScoreGradient, resolve_targets

_LOGITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PARTIAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GRADIENT_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _single_io(model: keras.Model) -> None:
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        raise BadInputError("Keras model", expected="a built model (with an Input)", got="an unbuilt model",
                            fix="call it once on data or build it with keras.Input") from None
    if len(inputs) != 1 or len(outputs) != 1:
        raise BadInputError("Keras model", expected="one input and one output",
                            got=f"{len(inputs)} inputs and {len(outputs)} outputs",
                            fix="pass keras.Model(model.inputs[i], model.outputs[j]) for the pair to explain")


def _is_softmax(activation) -> bool:
    return getattr(activation, "__name__", "") == "softmax"


def logits_model(model: keras.Model):
    """A callable giving the model's pre-softmax scores (the model itself when it does not end in softmax)."""
    cached = _LOGITS.get(model)
    if cached is not None:
        return cached
    _single_io(model)
    last = model.layers[-1]
    fn = model
    if isinstance(last, keras.layers.Softmax) or (
            isinstance(last, keras.layers.Activation) and _is_softmax(last.activation)):
        fn = keras.Model(model.inputs, last.input)
    elif isinstance(last, keras.layers.Dense) and _is_softmax(last.activation):
        features = keras.Model(model.inputs, last.input)

        def fn(x, training=False):
            out = keras.ops.matmul(features(x, training=training), last.kernel)
            return out + last.bias if last.use_bias else out
    _LOGITS[model] = fn
    return fn


def _select(logits, chosen, score: str):
    if score == "prob":
        logits = tf.nn.softmax(logits, axis=1)
    elif score == "logprob":
        logits = tf.nn.log_softmax(logits, axis=1)
    elif score != "logit":
        raise BadInputError("score", expected="'logit', 'prob' or 'logprob'", got=repr(score))
    return tf.gather(logits, chosen, axis=1, batch_dims=1)


def _gradient_fn(model: keras.Model, score: str):
    """A compiled (tf.function) pass: logits, chosen targets (-1 = predicted) and d score / d input."""
    per_model = _GRADIENT_FNS.setdefault(model, {})
    if score in per_model:
        return per_model[score]
    logits_fn = logits_model(model)

    @tf.function(reduce_retracing=True)
    def run(x, targets):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = logits_fn(x, training=False)
            chosen = tf.where(targets < 0, tf.argmax(logits, axis=1, output_type=tf.int32), targets)
            total = tf.reduce_sum(_select(logits, chosen, score))
        return logits, chosen, tape.gradient(total, x)

    per_model[score] = run
    return run


class KerasAdapter:
    """The Keras implementation of what gradsight's methods ask of a framework."""

    name = "keras"

    def class_score_gradient(self, model, inputs: np.ndarray, targets: list[int | None], score: str = "logit",
                             fast: bool = True) -> ScoreGradient:
        logits_fn = logits_model(model)
        classes = model.outputs[0].shape[-1]
        resolve_targets(targets, classes)  # range check before any work
        x = tf.convert_to_tensor(np.asarray(inputs, dtype=np.float32))
        if fast:
            wanted = tf.constant([-1 if t is None else int(t) for t in targets], dtype=tf.int32)
            logits, chosen, grad = _gradient_fn(model, score)(x, wanted)
        else:
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = logits_fn(x, training=False)
                chosen = tf.constant(resolve_targets(targets, classes, np.asarray(logits)), dtype=tf.int32)
                total = tf.reduce_sum(_select(logits, chosen, score))
            grad = tape.gradient(total, x)
        logits = np.asarray(logits)
        if logits.ndim != 2 or not np.isfinite(logits).all():
            raise BadInputError("model output", expected="finite class scores of shape (N, classes)",
                                got=f"shape {logits.shape}" if logits.ndim != 2 else "NaN or infinity")
        return ScoreGradient(logits, np.asarray(chosen), np.asarray(grad))

    # --- layers, partial models, node gradients ------------------------------------------------------------

    def layer_names(self, model) -> list[str]:
        return [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]

    def resolve_layer(self, model, layer):
        layers = [lay for lay in model.layers if not isinstance(lay, keras.layers.InputLayer)]
        if isinstance(layer, keras.layers.Layer):
            if any(lay is layer for lay in layers):
                return layer.name, layer
            raise BadInputError("layer", expected="a layer of the model", got=layer.name)
        if isinstance(layer, int) and not isinstance(layer, bool):
            if not -len(layers) <= layer < len(layers):
                raise BadInputError("layer index", expected=f"0..{len(layers) - 1}", got=str(layer),
                                    fix="or give the layer's name")
            return layers[layer].name, layers[layer]
        for lay in layers:
            if lay.name == layer:
                return lay.name, lay
        raise UnknownNameError("layer", str(layer), [lay.name for lay in layers])

    def partial_model(self, model, name: str):
        per_model = _PARTIAL.setdefault(model, {})
        if name not in per_model:
            _single_io(model)
            per_model[name] = keras.Model(model.inputs, model.get_layer(name).output)
        return per_model[name]

    def unit_gradients(self, model, layer, units, inputs, plans=None, batch_size=32, fast=True):
        """As the PyTorch adapter's; crops use only the input window of each plan (no deeper cuts)."""
        name, _ = self.resolve_layer(model, layer)
        partial = self.partial_model(model, name)
        plans = list(plans) if plans is not None else [None] * len(units)
        grads = np.zeros((len(units), *inputs.shape), dtype=np.float32)
        values = np.zeros(len(units))
        array = np.asarray(inputs, dtype=np.float32)
        windows = [None if p is None else tuple(slice(a, b) for a, b in p.input_window) for p in plans]
        whole = tuple(slice(0, n) for n in array.shape[:-1])
        for start in range(0, len(units), batch_size):
            rows = range(start, min(start + batch_size, len(units)))
            x = tf.convert_to_tensor(np.stack([array[windows[i] or whole] for i in rows]))
            local = np.array([units[i] for i in rows])
            for i, row in enumerate(rows):
                if plans[row] is not None:
                    local[i, :2] -= plans[row].unit_offset()
            with tf.GradientTape() as tape:
                tape.watch(x)
                # .call runs the layers without the partial model's input-size check, so windows fit
                z = partial.call(x, training=False) if windows[start] is not None else partial(x, training=False)
                if len(z.shape) != 4:
                    raise BadInputError(f"layer {name!r}", expected="a feature map (N, rows, cols, channels)",
                                        got=f"output of shape {tuple(z.shape)}", fix="pick a convolutional layer")
                index = np.stack([np.arange(len(local)), local[:, 0], local[:, 1], local[:, 2]], axis=1)
                picked = tf.gather_nd(z, index)
                total = tf.reduce_sum(picked)
            block = np.asarray(tape.gradient(total, x))
            for i, row in enumerate(rows):
                grads[(row, *(windows[row] or whole))] = block[i]
            values[start:start + len(local)] = np.asarray(picked)
        return grads, values

    def support_map(self, model, layer, position, inputs, seed=0):
        name, _ = self.resolve_layer(model, layer)
        partial = self.partial_model(model, name)
        x = tf.convert_to_tensor(np.asarray(inputs, dtype=np.float32))
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = partial(x, training=False)
            if len(z.shape) != 4:
                raise BadInputError(f"layer {name!r}", expected="a feature map (N, rows, cols, channels)",
                                    got=f"output of shape {tuple(z.shape)}")
            weights = np.random.default_rng(seed).random(z.shape[-1]).astype(np.float32) + 0.5
            total = tf.reduce_sum(z[:, position[0], position[1], :] * weights)
        return np.abs(np.asarray(tape.gradient(total, x))).sum(axis=(0, 3))

    def linearised_copy(self, model):
        """A copy with linear activations and average- instead of max-pooling, same weights."""

        def swap(layer):
            config = layer.get_config()
            if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
                                  keras.layers.Softmax)) or (isinstance(layer, keras.layers.Activation)):
                return keras.layers.Activation("linear", name=layer.name)
            if isinstance(layer, keras.layers.MaxPooling2D):
                return keras.layers.AveragePooling2D(pool_size=config["pool_size"], strides=config["strides"],
                                                     padding=config["padding"], name=layer.name)
            if isinstance(layer, keras.layers.MaxPooling1D):
                return keras.layers.AveragePooling1D(pool_size=config["pool_size"], strides=config["strides"],
                                                     padding=config["padding"], name=layer.name)
            if "activation" in config and config["activation"] not in ("linear", None):
                config["activation"] = "linear"
            return layer.__class__.from_config(config)

        clone = keras.models.clone_model(model, clone_function=swap, recursive=True)
        clone.set_weights(model.get_weights())
        return clone

    def trace_fields(self, model, input_shape, name=None):
        from .keras_fields import trace_fields

        return trace_fields(model, input_shape, name)

    def default_input_shape(self, model) -> tuple[int, ...]:
        _single_io(model)
        shape = model.inputs[0].shape  # (None, rows, cols, channels)
        sizes = tuple(n if n is not None else 224 for n in shape[1:-1])
        return (shape[-1], *sizes)
