"""Keras 3 adapter (TensorFlow backend): the same services as the PyTorch adapter, for ``keras.Model``.

Example:
    >>> import keras, gradsight                                                      # doctest: +SKIP
    >>> model = keras.applications.ResNet50(weights=None)                            # doctest: +SKIP
    >>> gradsight.saliency(model, x).saliency.shape                                  # doctest: +SKIP
    (1, 224, 224)

Keras works channels-last, which is gradsight's boundary layout, so arrays pass as they are. Models are always
called with ``training=False`` (BatchNorm moving statistics, no dropout); nothing on the model is changed.
A model ending in a softmax is explained through its logits, the softmax's input: a Dense with a softmax
activation, or any final operation shown on the data to compute softmax of the one tensor it reads (a Softmax or
Activation layer, ``keras.ops.softmax``, a Lambda). Output rows that are probabilities with no such operation are
never called logits: score='logit' is refused, 'prob'/'logprob' differentiate the output itself / its log.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

from ..errors import BadInputError, UnknownNameError
from .base import ScoreGradient, resolve_targets, rows_are_probabilities

_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its softmax step (or None)
_READINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> "logits" | "probabilities"
_PARTIAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GRADIENT_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _graph_io(model: keras.Model):
    """(inputs, outputs) of a functional or Sequential model; None for a model without a graph of layers
    (subclassed, or a Sequential model never built)."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return None
    return (inputs, outputs) if inputs and outputs else None


def _single_io(model: keras.Model, purpose: str = "node gradients and receptive fields") -> None:
    io = _graph_io(model)
    if io is None and isinstance(model, keras.Sequential):
        raise BadInputError("Keras model", expected="a built model (with an Input)", got="an unbuilt Sequential "
                            "model", fix="call it once on data or start it with keras.Input")
    if io is None:
        # A subclassed model's layers are wired in Python code inside call(), which Keras does not record, so
        # there is no graph to cut at a layer or to walk; calling it on data does not change that.
        raise BadInputError("Keras model", expected=f"a functional or Sequential model for {purpose} (they "
                            f"need the graph of layers)", got=f"a subclassed model ({type(model).__name__}) whose "
                            f"layers are wired inside call()", fix="build the same layers functionally, "
                            "keras.Model(inputs, outputs); saliency works on subclassed models as they are")
    inputs, outputs = io
    if len(inputs) != 1 or len(outputs) != 1:
        raise BadInputError("Keras model", expected="one input and one output",
                            got=f"{len(inputs)} inputs and {len(outputs)} outputs",
                            fix="pass keras.Model(model.inputs[i], model.outputs[j]) for the pair to explain")


def _is_softmax(activation) -> bool:
    return getattr(activation, "__name__", "") == "softmax"


def _producer(model: keras.Model, tensor):
    """The layer or operation whose output is ``tensor`` (the model's output), or None."""
    for op in reversed(getattr(model, "operations", None) or model.layers):
        try:
            if op.output is tensor:
                return op
        except (AttributeError, ValueError, RuntimeError):  # shared layers have no single output
            continue
    return None


def _final_operation(model: keras.Model):
    """(the operation making the model's single output, the one tensor it reads), or (None, None): for a
    functional or Sequential model whose output comes from a layer or ``keras.ops`` call."""
    io = _graph_io(model)
    if io is None or len(io[0]) != 1 or len(io[1]) != 1:
        return None, None
    op = _producer(model, io[1][0])
    source = getattr(op, "input", None) if op is not None else None
    return (op, source) if isinstance(source, keras.KerasTensor) else (None, None)


def _named_softmax(op) -> bool:
    """A Softmax or Activation('softmax') layer, or ``keras.ops.softmax``, over the class axis."""
    if isinstance(op, keras.layers.Activation):
        return _is_softmax(op.activation)
    is_softmax = isinstance(op, keras.layers.Softmax) or (
        type(op).__name__ == "Softmax" and type(op).__module__.startswith("keras."))  # keras.ops.softmax
    return is_softmax and getattr(op, "axis", -1) in (-1, 1)


def _dense_logits(op, features):
    z = keras.ops.matmul(features, op.kernel)
    return z + op.bias if op.use_bias else z


def _softmax_step(model: keras.Model):
    """``fn(x, training)`` -> (the scores a final softmax reads, the model's output), when the model's output
    comes from one operation that may be a softmax: a Dense with a softmax activation, or any operation that
    reads one tensor shaped like the output (a Softmax or Activation layer, ``keras.ops.softmax``, a Lambda, ...).
    None otherwise. Whether it IS a softmax is decided on the data, output == softmax(scores)
    (``_is_softmax_of``): evidence, not a guess from names. One forward pass gives both tensors."""
    if model in _STEPS:
        return _STEPS[model]
    fn = None
    op, source = _final_operation(model)
    output = model.outputs[0] if op is not None else None
    if op is not None and len(output.shape) == 2:
        dense = isinstance(op, keras.layers.Dense) and _is_softmax(op.activation)
        if dense or tuple(source.shape) == tuple(output.shape):
            both = keras.Model(model.inputs, [source, output])

            def fn(x, training=False):
                z, out = both(x, training=training)
                return (_dense_logits(op, z) if dense else z), out
    _STEPS[model] = fn
    return fn


def _is_softmax_of(scores: np.ndarray, output: np.ndarray) -> bool:
    z = np.asarray(scores, dtype=np.float64)
    if z.shape != np.shape(output) or not np.isfinite(z).all():
        return False
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return bool(np.allclose(e / e.sum(axis=1, keepdims=True), output, rtol=1e-4, atol=1e-6))


def _plain(model: keras.Model):
    def fn(x, training=False):
        out = model(x, training=training)
        return out, out

    return fn


def logits_model(model: keras.Model):
    """The model's pre-softmax scores as a callable, from the structure alone: ``keras.Model(inputs, logits)``
    behind a final Softmax/Activation('softmax') layer or ``keras.ops.softmax``, a function for a Dense with a
    softmax activation, else the model itself. (``KerasAdapter.class_score_gradient`` also steps over a Lambda
    or any other final operation once the data shows that it computes a softmax.)"""
    op, source = _final_operation(model)
    if op is None:
        return model
    if isinstance(op, keras.layers.Dense) and _is_softmax(op.activation):
        features = keras.Model(model.inputs, source)
        return lambda x, training=False: _dense_logits(op, features(x, training=training))
    if _named_softmax(op):
        return keras.Model(model.inputs, source)
    return model


def _select(scores, chosen, score: str, reading: str):
    if reading == "probabilities":  # the output is already a probability; 'logit' is refused by the caller
        tiny = np.finfo(np.float32).tiny
        scores = tf.math.log(tf.maximum(scores, tiny)) if score == "logprob" else scores
    elif score == "prob":
        scores = tf.nn.softmax(scores, axis=1)
    elif score == "logprob":
        scores = tf.nn.log_softmax(scores, axis=1)
    elif score != "logit":
        raise BadInputError("score", expected="'logit', 'prob' or 'logprob'", got=repr(score))
    return tf.gather(scores, chosen, axis=1, batch_dims=1)


def _gradient_fn(model: keras.Model, kind: str, reading: str, score: str, fast: bool):
    """One pass: (scores, output, chosen targets, d score / d input) with ``targets`` -1 = the predicted class.
    ``kind`` "step" reads the scores before a final softmax, "plain" the model's output; compiled when fast."""
    key = (kind, reading, score)
    per_model = _GRADIENT_FNS.setdefault(model, {})
    if fast and key in per_model:
        return per_model[key]
    scores_fn = _softmax_step(model) if kind == "step" else _plain(model)

    def run(x, targets):
        with tf.GradientTape() as tape:
            tape.watch(x)
            scores, output = scores_fn(x, training=False)
            # Clamped so that a class index too large for a model that declares no class count (subclassed)
            # cannot fail inside the graph; it is refused after the pass with the real count.
            last = tf.shape(scores)[1] - 1
            chosen = tf.minimum(tf.where(targets < 0, tf.argmax(scores, axis=1, output_type=tf.int32), targets),
                                last)
            total = tf.reduce_sum(_select(scores, chosen, score, reading))
        return scores, output, chosen, tape.gradient(total, x)

    if not fast:
        return run
    per_model[key] = tf.function(run, reduce_retracing=True)
    return per_model[key]


def _describe(shape: tuple) -> str:
    """"1 channel at 128 x 128" for a channels-last (rows, cols, channels) shape."""
    *spatial, channels = shape
    where = " x ".join("any" if n is None else str(n) for n in spatial)
    return f"{channels} channel{'s' * (channels != 1)} at {where}"


def _check_input(model: keras.Model, array: np.ndarray) -> None:
    """Refuse input the model's Input cannot take, before Keras fails deep inside with a traceback."""
    declared, got = tuple(model.inputs[0].shape[1:]), tuple(array.shape[1:])
    if len(declared) == len(got) and all(d is None or d == g for d, g in zip(declared, got)):
        return
    if len(declared) != len(got) or len(declared) < 2:
        dims = ", ".join("any" if n is None else str(n) for n in declared)
        raise BadInputError("model input", expected=f"arrays of shape (N, {dims}) (the model's Input)",
                            got=f"shape {array.shape}", fix="pass input the model was built for")
    if declared[-1] not in (None, got[-1]):
        colour = "greyscale" if declared[-1] == 1 else f"{declared[-1]}-channel"
        fix = (f"the model reads {colour} input: convert the images and pass them as arrays of that shape, "
               f"or use a model made for {got[-1]}-channel images")
    else:
        size = " x ".join(str(n) for n in declared[:-1])
        fix = (f"resize the input to {size} (e.g. preprocess=Preprocess(resize=({size.replace(' x ', ', ')}), "
               f"crop=None, ...)), or build the model on keras.Input(shape=(None, None, {declared[-1]}))")
    raise BadInputError("model input", expected=f"{_describe(declared)} (the model's Input)",
                        got=_describe(got), fix=fix)


def _probabilities_refused() -> BadInputError:
    return BadInputError("model output", expected="class logits (pre-softmax scores)",
                         got="rows that sum to 1 (probabilities) and no softmax layer to step over, so 'logit' "
                             "would differentiate a probability",
                         fix="end the model in its logits, or pass score='prob' (or 'logprob')")


def _result(scores, chosen, grad, targets) -> ScoreGradient:
    scores = np.asarray(scores)
    if scores.ndim != 2 or not np.isfinite(scores).all():
        raise BadInputError("model output", expected="finite class scores of shape (N, classes)",
                            got=f"shape {scores.shape}" if scores.ndim != 2 else "NaN or infinity")
    resolve_targets(targets, scores.shape[1])  # models that declare no class count are checked here
    return ScoreGradient(scores, np.asarray(chosen), np.asarray(grad))


class KerasAdapter:
    """The Keras implementation of what gradsight's methods ask of a framework."""

    name = "keras"

    def class_score_gradient(self, model, inputs: np.ndarray, targets: list[int | None], score: str = "logit",
                             fast: bool = True) -> ScoreGradient:
        """Scores, chosen targets and d score / d input. A final softmax is stepped over when the output equals
        softmax of its input on this batch; output rows that are probabilities otherwise are read as such:
        'logit' is refused, 'prob'/'logprob' differentiate the output / its log, and the returned logits are
        log(probabilities), so that their softmax gives the model's probabilities back."""
        if score not in ("logit", "prob", "logprob"):
            raise BadInputError("score", expected="'logit', 'prob' or 'logprob'", got=repr(score))
        array = np.asarray(inputs, dtype=np.float32)
        io = _graph_io(model)
        if io is not None:  # subclassed models have no declared inputs or class count: checked on the way
            _single_io(model)
            _check_input(model, array)
            resolve_targets(targets, io[1][0].shape[-1])  # range check before any work
        x = tf.convert_to_tensor(array)
        wanted = tf.constant([-1 if t is None else int(t) for t in targets], dtype=tf.int32)
        if _softmax_step(model) is not None:
            scores, output, chosen, grad = _gradient_fn(model, "step", "logits", score, fast)(x, wanted)
            if _is_softmax_of(scores, output):
                return _result(scores, chosen, grad, targets)
            _STEPS[model] = None  # its last operation is not a softmax: read the output itself from now on
        reading = _READINGS.get(model, "logits")
        scores, output, chosen, grad = _gradient_fn(model, "plain", reading, score, fast)(x, wanted)
        actual = "probabilities" if rows_are_probabilities(np.asarray(output)) else "logits"
        if actual != reading:
            _READINGS[model] = reading = actual
            if not (actual == "probabilities" and score == "logit"):
                scores, output, chosen, grad = _gradient_fn(model, "plain", reading, score, fast)(x, wanted)
        if reading == "probabilities":
            if score == "logit":
                raise _probabilities_refused()
            scores = np.log(np.maximum(np.asarray(output, dtype=np.float32), np.finfo(np.float32).tiny))
        return _result(scores, chosen, grad, targets)

    # --- layers, partial models, node gradients ------------------------------------------------------------

    def score_gradient(self, model, inputs: np.ndarray, targets, score: str = "logit",
                       fast: bool = True) -> ScoreGradient:
        return self.class_score_gradient(model, inputs, list(targets), score, fast)

    def predict(self, model, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        from .keras_primitives import predict

        return predict(model, inputs, batch_size)

    def layer_gradient(self, model, layer, inputs: np.ndarray, targets, score: str = "logit"):
        from .keras_primitives import layer_gradient

        return layer_gradient(model, layer, inputs, targets, score)

    def modified_copy(self, model, rule: str, *, layers=(), seed: int = 0, probe=None):
        from .keras_primitives import modified_copy

        return modified_copy(model, rule, layers=layers, seed=seed, probe=probe)

    def parameter_blocks(self, model) -> list[str]:
        """Layers with weights, top (logits) first: the blocks a sanity check re-initialises."""
        return [layer.name for layer in model.layers if layer.weights][::-1]

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
