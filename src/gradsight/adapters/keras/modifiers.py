"""Keras 3 primitives of the attribution family: forward-only scores, layer gradients, modified copies.

Example:
    >>> import keras, numpy as np                                                    # doctest: +SKIP
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])  # doctest: +SKIP
    >>> predict(model, np.zeros((5, 8, 8, 3), np.float32)).shape                      # doctest: +SKIP
    (5, 2)
    >>> guided = modified_copy(model, "guided")       # the user's model is untouched  # doctest: +SKIP

Arrays cross channels last (N, H, W, C), as Keras itself works. Models run with ``training=False``. Scores are
read as ``KerasAdapter.class_score_gradient`` reads them: a final softmax is stepped over when the data show
that the output is softmax of what the last operation reads (a Dense with a softmax activation, a Softmax or
Activation layer, ``keras.ops.softmax``, a Lambda); output rows that are probabilities otherwise are never
called logits. The rules of ``modified_copy`` are ``gradsight.adapters.base.MODIFY_RULES``; copies are built
with ``clone_model`` from Functional and Sequential models (nested ones included) and get the model's weights.
"""

from __future__ import annotations

import inspect
import math
import re
import weakref
import zlib
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from ..errors import BadInputError, GradsightError, UnknownNameError
from .base import MODIFY_RULES, LayerGradient, resolve_targets, rows_are_probabilities
from .keras import KerasAdapter

SCORES = ("logit", "prob", "logprob")
_TINY = np.finfo(np.float32).tiny  # log of a probability that underflowed to 0, as class_score_gradient takes it
_PASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {layer name or None: _Pass}


# --- inputs and scores -----------------------------------------------------------------------------------


def _graph_io(model):
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return None
    return (inputs, outputs) if inputs and outputs else None


def _require_graph(model, purpose: str):
    """The model's single (input, output) pair; refuses unbuilt, subclassed and multi-input/output models."""
    if not isinstance(model, keras.Model):
        raise BadInputError("model", expected="a keras.Model", got=f"a {type(model).__name__}")
    io = _graph_io(model)
    if io is None and isinstance(model, keras.Sequential):
        raise BadInputError("Keras model", expected="a built model (with an Input)", got="an unbuilt Sequential "
                            "model", fix="call it once on data or start it with keras.Input")
    if io is None:
        raise BadInputError("Keras model", expected=f"a functional or Sequential model for {purpose} (it needs "
                            "the graph of layers)", got=f"a subclassed model ({type(model).__name__}) whose layers "
                            "are wired inside call()", fix="build the same layers with keras.Model(inputs, outputs)")
    if len(io[0]) != 1 or len(io[1]) != 1:
        raise BadInputError("Keras model", expected="one input and one output",
                            got=f"{len(io[0])} inputs and {len(io[1])} outputs",
                            fix="pass keras.Model(model.inputs[i], model.outputs[j]) for the pair to explain")
    return io[0][0], io[1][0]


def _as_batch(model, inputs) -> np.ndarray:
    """``inputs`` as a float32 array whose shape fits the model's Input (channels last), or one clear error."""
    x = np.asarray(inputs, dtype=np.float32)
    io = _graph_io(model)
    wanted = tuple(io[0][0].shape)[1:] if io is not None and len(io[0]) == 1 else None
    if wanted is not None and (x.ndim != len(wanted) + 1 or any(w not in (None, g)
                                                                 for w, g in zip(wanted, x.shape[1:]))):
        dims = ", ".join("any" if w is None else str(w) for w in wanted)
        raise BadInputError("model input", expected=f"arrays of shape (N, {dims}) (the model's Input, channels "
                            "last)", got=f"shape {x.shape}", fix="pass input the model was built for")
    return x


def _final_step(model, output):
    """(Dense layer or None, the tensor a final softmax would read) when the model's output comes from one
    operation reading one tensor: a Dense with a softmax activation, or one whose input is shaped like the
    output (Softmax or Activation layer, keras.ops.softmax, Lambda). (None, None) otherwise. Whether the
    operation IS a softmax is decided on the data (``_is_softmax_of``), not from names."""
    op = _producer(model, output) if len(output.shape) == 2 else None
    try:
        source = op.input if op is not None else None
    except (AttributeError, ValueError, RuntimeError):  # a shared layer has no single input
        source = None
    if not isinstance(source, keras.KerasTensor):
        return None, None
    if isinstance(op, keras.layers.Dense) and _is_softmax(getattr(op, "activation", None)):
        return op, source
    return (None, source) if tuple(source.shape) == tuple(output.shape) else (None, None)


def _producer(model, tensor):
    """The layer or keras.ops operation of ``model`` whose output is ``tensor``, or None."""
    for op in reversed(getattr(model, "operations", None) or model.layers):
        try:
            if op.output is tensor:
                return op
        except (AttributeError, ValueError, RuntimeError):  # shared layers have no single output
            continue
    return None


def _is_softmax(activation) -> bool:
    return getattr(activation, "__name__", "") == "softmax"


def _dense_logits(dense, features):
    z = tf.matmul(features, dense.kernel)
    return z + dense.bias if dense.use_bias else z


def _is_softmax_of(scores: np.ndarray, output: np.ndarray) -> bool:
    z = np.asarray(scores, dtype=np.float64)
    if z.shape != np.shape(output) or not np.isfinite(z).all():
        return False
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return bool(np.allclose(e / e.sum(axis=1, keepdims=True), output, rtol=1e-4, atol=1e-6))


class _Pass:
    """One forward pass giving a layer's output (optional), the model's output and a final softmax's input."""

    def __init__(self, model, layer=None):
        if layer is None and isinstance(model, keras.Model) and not isinstance(model, keras.Sequential) \
                and _graph_io(model) is None:  # subclassed: no graph to look into, its output as it is
            self.dense, self.stepped, self.graph = None, False, model
            return
        _, output = _require_graph(model, "layer gradients" if layer is not None else "scores")
        self.dense, source = _final_step(model, output)
        self.stepped = source is not None
        wanted = ([layer.output] if layer is not None else []) + [output] + ([source] if self.stepped else [])
        self.graph = keras.Model(model.inputs, wanted)

    def __call__(self, x):
        """[layer output,] output, scores: the softmax's input, or the output again when nothing to step over."""
        out = self.graph(x, training=False)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        if self.stepped:
            out[-1] = _dense_logits(self.dense, out[-1]) if self.dense is not None else out[-1]
        else:
            out.append(out[-1])
        return out


def _pass_for(model, name=None, layer=None) -> _Pass:
    per_model = _PASSES.setdefault(model, {})
    if name not in per_model:
        per_model[name] = _Pass(model, layer)
    return per_model[name]


def _reading(output: np.ndarray, scores: np.ndarray, stepped: bool) -> str:
    """'step': the scores are logits whose softmax is the output; else how to read the output itself."""
    if stepped and _is_softmax_of(scores, output):
        return "step"
    return "probabilities" if rows_are_probabilities(output) else "logits"


def _check_finite(scores: np.ndarray) -> None:
    if scores.ndim != 2 or not np.isfinite(scores).all():
        raise BadInputError("model output", expected="finite class scores of shape (N, classes)",
                            got=f"shape {scores.shape}" if scores.ndim != 2 else "NaN or infinity")


def predict(model: keras.Model, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Pre-softmax class scores (N, K), float32, forward only, ``batch_size`` inputs at a time.

    Example:
        >>> predict(model, x, batch_size=16).argmax(axis=1)       # the predicted classes   # doctest: +SKIP

    A model whose output rows are probabilities with no softmax to step over gives log(probabilities), as
    ``class_score_gradient`` does: scores whose softmax is the model's output.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError("batch_size", expected="a positive integer", got=repr(batch_size))
    run = _pass_for(model)
    x = _as_batch(model, inputs)
    outputs, scores = [], []
    for start in range(0, len(x), batch_size):
        output, score = run(tf.convert_to_tensor(x[start:start + batch_size]))
        outputs.append(np.asarray(output, np.float32))
        scores.append(np.asarray(score, np.float32))
    if not outputs:
        return np.zeros((0, model.outputs[0].shape[-1]), np.float32)
    output, scores = np.concatenate(outputs), np.concatenate(scores)
    reading = _reading(output, scores, run.stepped)
    result = scores if reading == "step" else np.log(np.maximum(output, _TINY)) if reading == "probabilities" \
        else output
    _check_finite(result)
    return result


def _probabilities_refused() -> BadInputError:
    return BadInputError("model output", expected="class logits (pre-softmax scores)",
                         got="rows that sum to 1 (probabilities) and no softmax layer to step over, so 'logit' "
                             "would differentiate a probability",
                         fix="end the model in its logits, or pass score='prob' (or 'logprob')")


def _select(scores, reading: str, chosen, score: str):
    """score[target] per row; ``reading`` 'probabilities': ``scores`` holds the model's probabilities."""
    if reading == "probabilities":
        if score == "logit":
            raise _probabilities_refused()
        scores = scores if score == "prob" else tf.math.log(tf.maximum(scores, _TINY))
    elif score == "prob":
        scores = tf.nn.softmax(scores, axis=1)
    elif score == "logprob":
        scores = tf.nn.log_softmax(scores, axis=1)
    return tf.gather(scores, chosen, axis=1, batch_dims=1)


def _times_used(model, name: str) -> int:
    """How often the model's own graph calls the layer (the layer's ``output`` is only its first call)."""
    if isinstance(model, keras.Sequential):
        return 1
    try:
        entries = model.get_config().get("layers", [])
    except (NotImplementedError, TypeError, ValueError):
        return 1
    return next((len(e.get("inbound_nodes", [])) or 1 for e in entries if e.get("name") == name), 1)


def _layer_pass(model, name: str, layer) -> _Pass:
    if name in _PASSES.get(model, {}):
        return _PASSES[model][name]
    output = layer.output
    shape = None if isinstance(output, (list, tuple, dict)) else tuple(output.shape)
    if shape is None or len(shape) != 4:
        got = "several outputs" if shape is None else f"output of shape {shape}"
        raise BadInputError(f"layer {name!r}", expected="a spatial feature map (N, rows, cols, channels)",
                            got=got, fix="pick a convolutional layer (see `gradsight rf MODEL`)")
    uses = _times_used(model, name)
    if uses > 1:
        raise BadInputError(f"layer {name!r}", expected="a layer the model calls once",
                            got=f"a layer called {uses} times (its activations are ambiguous)",
                            fix="pick a layer applied once, e.g. the one after it")
    try:
        return _pass_for(model, name, layer)
    except ValueError as err:
        if isinstance(err, BadInputError):
            raise
        raise BadInputError(f"layer {name!r}", expected="a layer on the path from the model's input to its output",
                            got=str(err).splitlines()[0], fix="pick a layer listed by `gradsight rf MODEL`") from None


def layer_gradient(model: keras.Model, layer, inputs: np.ndarray, targets: Sequence[int | None],
                   score: str = "logit") -> LayerGradient:
    """Activations A of ``layer`` (N, h, w, c) and d score[target] / dA, one forward and one backward pass.

    Example:
        >>> g = layer_gradient(model, "conv5_block3_out", x, [None])          # doctest: +SKIP
        >>> cam = np.maximum((g.gradient.mean(axis=(1, 2), keepdims=True) * g.activations).sum(-1), 0)  # doctest: +SKIP

    ``layer``: a name, an index among the model's layers or the layer itself (as ``KerasAdapter.resolve_layer``).
    ``logits`` are read as by ``predict``.
    """
    if score not in SCORES:
        raise BadInputError("score", expected="'logit', 'prob' or 'logprob'", got=repr(score))
    _require_graph(model, "layer gradients")
    name, found = KerasAdapter().resolve_layer(model, layer)
    run = _layer_pass(model, name, found)
    x = _as_batch(model, inputs)
    targets = list(targets)
    if len(targets) != len(x):
        raise BadInputError("targets", expected=f"one per input ({len(x)})", got=f"{len(targets)} targets")
    classes = model.outputs[0].shape[-1]
    resolve_targets(targets, classes)  # range check before any work
    xt = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)  # records the whole pass, also through frozen (non-trainable) weights
        activations, output, scores = run(xt)
        reading = _reading(np.asarray(output), np.asarray(scores), run.stepped)
        read = scores if reading == "step" else output
        logits = np.asarray(read) if reading != "probabilities" else np.log(np.maximum(np.asarray(read), _TINY))
        _check_finite(logits)
        chosen = resolve_targets(targets, classes, logits)
        total = tf.reduce_sum(_select(read, reading, tf.constant(chosen, tf.int32), score))
    gradient = tape.gradient(total, activations)
    if gradient is None:
        raise BadInputError(f"layer {name!r}", expected="a layer the class scores depend on",
                            got="a layer the scores do not depend on", fix="pick a layer before the classifier")
    return LayerGradient(np.asarray(activations, np.float32), np.asarray(gradient, np.float32),
                         logits.astype(np.float32), np.asarray(chosen, dtype=np.int64))

# --- modified copies --------------------------------------------------------------------------------------

_SCOPE = "gradsight_rule"  # name scope of the rule's own forward ops: the graph check skips them
_IN_SCOPE = re.compile(rf"{_SCOPE}(_\d+)?")
_RELU_OPS = {"Relu", "Relu6", "LeakyRelu"}
_SMOOTH_OPS = {"Elu", "Selu", "Sigmoid", "Tanh", "Softplus", "Softsign", "Erf", "LogSoftmax", "Softmax"}
_ALIASES = {"silu": "silu (swish)", "hard_silu": "hard_silu (hard_swish)"}


def _is_graph_model(model) -> bool:
    return isinstance(model, keras.Sequential) or any(c.__name__ == "Functional" for c in type(model).__mro__)


def _require_graph_model(model, what: str = "Keras model") -> None:
    if not isinstance(model, keras.Model):
        raise BadInputError(what, expected="a keras.Model", got=f"a {type(model).__name__}")
    if not _is_graph_model(model):
        raise BadInputError(what, expected="a Functional or Sequential model (copies are built layer by layer)",
                            got=f"a subclassed model ({type(model).__name__}) whose call() gradsight cannot copy",
                            fix="rebuild it with keras.Model(inputs, outputs) or keras.Sequential")


def _walk(model, prefix: str = ""):
    """(path, layer) for every layer, nested models included ('outer/inner'), input layers left out."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = prefix + layer.name
        yield path, layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer, path + "/")


def _final_op(model):
    """The layer or operation making the model's output (the last one inside a nested model), or None."""
    io = _graph_io(model)
    op = _producer(model, io[1][0]) if io is not None and len(io[1]) == 1 else None
    return _final_op(op) if isinstance(op, keras.Model) else op


def _ends_in_softmax(op) -> bool:
    """Whether the final operation may be the one softmax the model is allowed: a softmax activation or layer,
    keras.ops.softmax, or a Lambda (its content is unknown; the traced graph then allows one Softmax op)."""
    return _is_softmax(getattr(op, "activation", None)) or isinstance(op, (keras.layers.Softmax, keras.layers.Lambda)) \
        or (type(op).__name__ == "Softmax" and type(op).__module__.startswith("keras."))


def _relu_params(activation) -> tuple[float, float, float] | None:
    """(negative slope, threshold, max value) of a ReLU-family activation function or layer, else None."""
    if isinstance(activation, keras.layers.ReLU):
        high = math.inf if activation.max_value is None else float(activation.max_value)
        return float(activation.negative_slope), float(activation.threshold), high
    if isinstance(activation, keras.layers.LeakyReLU):
        return float(activation.negative_slope), 0.0, math.inf
    name = getattr(activation, "__name__", None)
    if name == "relu" and activation is keras.activations.relu:
        return 0.0, 0.0, math.inf
    if name == "relu6" and activation is keras.activations.relu6:
        return 0.0, 0.0, 6.0
    if name == "leaky_relu" and activation is keras.activations.leaky_relu:
        return float(inspect.signature(activation).parameters["negative_slope"].default), 0.0, math.inf
    return None


def _activation_name(activation) -> str:
    name = getattr(activation, "__name__", None) or type(activation).__name__
    return _ALIASES.get(name, name)


def _rule(x, forward, params, rule: str):
    """forward(x), back-propagating by ``rule`` ('guided' or 'deconvnet') instead of forward's derivative."""
    slope, low, high = params

    @tf.custom_gradient
    def apply(x):
        with tf.name_scope(_SCOPE):
            y = forward(x)

        def grad(g):
            if rule == "deconvnet":  # the forward mask is ignored: the activation applied to the gradient
                return tf.where(g > 0, g, slope * g) if slope else tf.nn.relu(g)
            inside = x > low if math.isinf(high) else tf.logical_and(x > low, x < high)
            local = tf.where(x > low, tf.cast(inside, g.dtype), tf.cast(slope, g.dtype))
            return local * tf.nn.relu(g)

        return y, grad

    return apply(x)


def _rule_function(forward, params, rule: str):
    def activation(x):
        return _rule(x, forward, params, rule)

    activation.__name__ = f"{rule}_{getattr(forward, '__name__', 'relu')}"
    return activation


class RuleActivation(keras.layers.Layer):
    """A ReLU-family activation layer whose backward pass follows ``rule``; forward as keras.activations.relu."""

    def __init__(self, negative_slope=0.0, threshold=0.0, max_value=None, leaky=False, rule="guided", **kwargs):
        super().__init__(**kwargs)
        self.negative_slope, self.threshold, self.max_value = negative_slope, threshold, max_value
        self.leaky, self.rule = leaky, rule

    def call(self, inputs):
        if self.leaky:  # exactly keras.layers.LeakyReLU's forward
            forward = lambda t: keras.activations.leaky_relu(t, negative_slope=self.negative_slope)  # noqa: E731
        else:  # exactly keras.layers.ReLU's forward
            forward = lambda t: keras.activations.relu(t, negative_slope=self.negative_slope,  # noqa: E731
                                                       max_value=self.max_value, threshold=self.threshold)
        high = math.inf if self.max_value is None else float(self.max_value)
        return _rule(inputs, forward, (float(self.negative_slope), float(self.threshold), high), self.rule)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope, "threshold": self.threshold,
                "max_value": self.max_value, "leaky": self.leaky, "rule": self.rule}


def _first(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _scan_activations(model, rule: str) -> int:
    """Count the ReLU-family activations; refuse, by name, every other activation but a final softmax."""
    final = _final_op(model)
    found, other = 0, {}  # activation name -> where it is
    for path, layer in _walk(model):
        if isinstance(layer, keras.Model):
            continue
        if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU)):
            found += 1
            continue
        if isinstance(layer, (keras.layers.ELU, keras.layers.PReLU)):
            other.setdefault(type(layer).__name__, []).append(repr(path))
            continue
        if isinstance(layer, keras.layers.Softmax):
            if layer is not final:
                other.setdefault("Softmax", []).append(repr(path))
            continue
        for key in sorted(k for k in vars(layer) if k == "activation" or k.endswith("_activation")):
            activation = getattr(layer, key, None)
            if activation is None or getattr(activation, "__name__", None) == "linear":
                continue
            if key == "activation" and _relu_params(activation) is not None:
                found += 1
            elif not (key == "activation" and layer is final and _is_softmax(activation)):
                where = repr(path) + ("" if key == "activation" else f" ({key})")
                other.setdefault(_activation_name(activation), []).append(where)
    if other:
        shown = "; ".join(f"{name} in layer {_first(paths)}" for name, paths in other.items())
        raise BadInputError("model", expected=f"ReLU-family activations for the {rule} rule (ReLU, ReLU6, "
                            "LeakyReLU) and at most a final softmax", got=f"other activations: {shown}",
                            fix="use a method without modified ReLU rules (e.g. gradient, integrated_gradients)")
    return found


def _clone_layer(layer):
    if isinstance(layer, keras.Model):  # Functional and Sequential ones are cloned by clone_model itself
        _require_graph_model(layer, f"nested model {layer.name!r}")
    config = layer.get_config()
    if type(layer) is keras.layers.Lambda:
        # from_config would rebuild the function from its bytecode (refused in safe mode): reuse the live one
        shape = config.get("output_shape")
        return keras.layers.Lambda(layer.function, output_shape=None if isinstance(shape, dict) else shape,
                                   mask=layer.mask, arguments=layer.arguments, name=layer.name,
                                   dtype=layer.dtype_policy)
    try:
        # the layer's own initializers, regularizers, constraints and activations, registered or not
        with keras.saving.custom_object_scope(_custom_objects(layer)):
            return layer.__class__.from_config(config)
    except (TypeError, ValueError, NotImplementedError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0].split(" using config=")[0][:200]
        raise BadInputError(f"layer {layer.name!r}", expected="a layer Keras can copy (get_config / from_config)",
                            got=f"{type(layer).__name__}: {reason}",
                            fix="give the layer a get_config() that lists its __init__ arguments") from None


def _custom_objects(layer) -> dict:
    pieces = (keras.initializers.Initializer, keras.regularizers.Regularizer, keras.constraints.Constraint)
    found = {}
    for value in vars(layer).values():
        if isinstance(value, pieces):
            found[type(value).__name__] = type(value)
        elif inspect.isfunction(value) and value.__name__ != "<lambda>":
            found[value.__name__] = value
    return found


def _swap_for(rule: str):
    def swap(layer):
        if isinstance(layer, keras.layers.ReLU):
            return RuleActivation(layer.negative_slope, layer.threshold, layer.max_value, rule=rule, name=layer.name)
        if isinstance(layer, keras.layers.LeakyReLU):
            return RuleActivation(layer.negative_slope, leaky=True, rule=rule, name=layer.name)
        clone = _clone_layer(layer)
        params = _relu_params(getattr(layer, "activation", None))
        if params is not None:
            # the layer keeps its name and its output stays post-activation: only the backward pass changes
            clone.activation = _rule_function(layer.activation, params, rule)
        return clone

    return swap


def _forward_ops(model) -> list:
    """Every operation of one traced forward pass (tf.function), nested function bodies included."""
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in model.inputs]
    graph = tf.function(lambda *x: model(x[0] if len(x) == 1 else list(x), training=False)) \
        .get_concrete_function(*specs).graph
    ops = [(op.type, op.name) for op in graph.get_operations()]
    for function in graph.as_graph_def().library.function:
        ops += [(node.op, f"{function.signature.name}/{node.name}") for node in function.node_def]
    return ops


# Keras layers that compute no activation besides their `activation` attribute (which the scan reads).
_PLAIN_LAYERS = tuple(getattr(keras.layers, n) for n in (
    "InputLayer", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "Add", "Subtract", "Multiply", "Average",
    "Maximum", "Concatenate", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "ZeroPadding2D", "Cropping2D", "UpSampling2D", "Flatten", "Reshape", "Permute", "Dropout", "SpatialDropout2D",
    "Rescaling", "Normalization", "Identity", "Activation", "ReLU", "LeakyReLU", "Softmax") if hasattr(keras.layers, n))


def _graph_ops(model):
    for op in getattr(model, "operations", None) or model.layers:
        yield op
        if isinstance(op, keras.Model):
            yield from _graph_ops(op)


def _check_traced(copy, model, rule: str) -> None:
    """Refuse a ReLU (or smooth activation) the layer-level swap did not reach: inside a Lambda or a custom
    layer's code, or a keras.ops call in the graph. Such a ReLU would keep its ordinary gradient: a silently
    wrong map. Models made only of plain Keras layers (the scan has seen all their activations) skip the trace."""
    if all(type(op) in _PLAIN_LAYERS or isinstance(op, (keras.Model, RuleActivation)) for op in _graph_ops(copy)):
        return
    final_softmax = int(_ends_in_softmax(_final_op(model)))
    relus, smooth, softmaxes = [], [], []
    for kind, name in _forward_ops(copy):
        if any(_IN_SCOPE.fullmatch(part) for part in name.split("/")):
            continue
        if kind in _RELU_OPS:
            relus.append(f"{kind} {name!r}")
        elif kind == "Softmax":
            softmaxes.append(f"{kind} {name!r}")
        elif kind in _SMOOTH_OPS:
            smooth.append(f"{kind} {name!r}")
    if relus:
        raise BadInputError("model", expected=f"ReLUs as activations of Keras layers (the {rule} rule replaces "
                            "them layer by layer)", got="ReLUs inside a Lambda, a custom layer or a keras.ops call: "
                            + ", ".join(relus[:4]), fix="use keras.layers.ReLU or activation='relu' instead")
    if smooth or len(softmaxes) > final_softmax:
        shown = ", ".join((smooth + softmaxes)[:4])
        raise BadInputError("model", expected=f"ReLU-family activations for the {rule} rule",
                            got=f"smooth activations inside a Lambda, a custom layer or a keras.ops call: {shown}",
                            fix="use a method without modified ReLU rules (e.g. gradient, integrated_gradients)")


def _copy_weights(model, copy) -> None:
    """The model's weights into its clone, variable to variable (no NumPy round trip: VGG16 has 138 M)."""
    source, target = model.weights, copy.weights
    if len(source) != len(target) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(source, target)):
        raise GradsightError(f"the copy of model {model.name!r} does not have the model's weights; "
                             "please report this model")
    for a, b in zip(source, target):
        b.assign(a)


def _rule_copy(model, rule: str, probe) -> keras.Model:
    found = _scan_activations(model, rule)
    copy = keras.models.clone_model(model, clone_function=_swap_for(rule), recursive=True)
    _copy_weights(model, copy)
    _check_traced(copy, model, rule)
    if found == 0:
        raise BadInputError("model", expected=f"ReLU activations (the {rule} rule modifies their backward pass)",
                            got="a model with no ReLU, ReLU6 or LeakyReLU activation",
                            fix="use a method that needs no ReLU (e.g. gradient, integrated_gradients)")
    if probe is not None:
        x = tf.convert_to_tensor(_as_batch(model, probe)[:1])
        ours, theirs = np.asarray(copy(x, training=False)), np.asarray(model(x, training=False))
        if not np.allclose(ours, theirs, rtol=1e-5, atol=1e-6 * max(float(np.abs(theirs).max()), 1.0)):
            raise GradsightError(f"the {rule} copy's forward pass differs from the model's on the probe "
                                 f"(max difference {np.abs(ours - theirs).max():.3g}); please report this model")
    return copy


# --- re-initialised copies --------------------------------------------------------------------------------

# where a weight's initializer is, when it is not at f"{name}_initializer" (DepthwiseConv2D's is "kernel")
_INITIALIZER_OF = {"depthwise_kernel": ("depthwise_initializer",), "pointwise_kernel": ("pointwise_initializer",),
                   "recurrent_kernel": ("recurrent_initializer",), "kernel": ("depthwise_initializer",)}


def _layer_path(model, entry, paths: dict) -> str:
    """The path of one entry of ``layers``: a name or path, an index among the model's layers, a layer."""
    if isinstance(entry, keras.layers.Layer):
        for path, layer in paths.items():
            if layer is entry:
                return path
        raise BadInputError("layer", expected="a layer of the model", got=entry.name)
    if isinstance(entry, int) and not isinstance(entry, bool):
        return KerasAdapter().resolve_layer(model, entry)[0]
    if isinstance(entry, str):
        if entry in paths:
            return entry
        matches = [path for path in paths if path.rsplit("/", 1)[-1] == entry]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise BadInputError(f"layer {entry!r}", expected="a name that means one layer",
                                got=f"layers at {', '.join(repr(m) for m in matches)}", fix="give the whole path")
    raise UnknownNameError("layer", str(entry), list(paths))


def _seeded(initializer, seed: int):
    """The same initializer with its seed replaced; the initializer itself when it has no seed."""
    config = initializer.get_config()
    return initializer.__class__.from_config({**config, "seed": seed}) if "seed" in config else initializer


def _redraw(layer, path: str, seed: int) -> None:
    for variable in layer.weights:
        key = variable.name
        found = [getattr(layer, a) for a in (f"{key}_initializer", *_INITIALIZER_OF.get(key, ())) if hasattr(layer, a)]
        initializer = found[0] if found else None
        if not callable(initializer):
            raise BadInputError(f"layer {path!r}", expected="weights with an initializer to draw them again",
                                got=f"weight {key!r} without one", fix="leave this layer out of `layers`")
        # one stream per weight, named by its path: independent of the order of `layers`
        stream = zlib.crc32(f"{seed}/{path}/{key}".encode()) & 0x7FFFFFFF
        drawn = _seeded(initializer, stream)
        value = np.asarray(drawn(tuple(variable.shape), dtype=variable.dtype))
        if drawn is initializer and not np.array_equal(value, np.asarray(drawn(tuple(variable.shape),
                                                                                 dtype=variable.dtype))):
            raise BadInputError(f"layer {path!r}", expected="initializers that take a seed (reproducible copies)",
                                got=f"{type(initializer).__name__} for {key!r}, random without a seed",
                                fix="give the initializer a `seed` argument, or leave this layer out")
        variable.assign(value)


def _reinit_copy(model, layers: Sequence, seed) -> keras.Model:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise BadInputError("seed", expected="an integer", got=repr(seed))
    layers = [layers] if isinstance(layers, (str, keras.layers.Layer)) else list(layers)
    if not layers:
        raise BadInputError("layers", expected="at least one layer to re-initialise", got="none")
    paths = dict(_walk(model))
    chosen = list(dict.fromkeys(_layer_path(model, entry, paths) for entry in layers))
    copy = keras.models.clone_model(model, clone_function=_clone_layer, recursive=True)
    _copy_weights(model, copy)
    copied = dict(_walk(copy))
    for path in chosen:
        inside = [(p, layer) for p, layer in copied.items()
                  if (p == path or p.startswith(path + "/")) and not isinstance(layer, keras.Model)]
        if not any(layer.weights for _, layer in inside):
            raise BadInputError(f"layer {path!r}", expected="a layer with parameters to re-initialise",
                                got=f"{type(copied[path]).__name__} without any", fix="pick a layer with weights")
        for p, layer in inside:
            _redraw(layer, p, int(seed))
    return copy


def modified_copy(model: keras.Model, rule: str, *, layers: Sequence = (), seed: int = 0,
                  probe: np.ndarray | None = None) -> keras.Model:
    """A new model following ``rule`` (see MODIFY_RULES); the user's model and its weights are untouched.

    Example:
        >>> guided = modified_copy(model, "guided")         # same forward, guided ReLU backward  # doctest: +SKIP
        >>> random = modified_copy(model, "reinit", layers=["predictions"], seed=0)   # doctest: +SKIP

    "guided"/"deconvnet": every ReLU, ReLU6 and LeakyReLU (layers, or ``activation=`` of Conv/Dense layers)
    back-propagates by the rule; other activations (but a final softmax) are refused by name, and so are ReLUs
    inside Lambda or custom layers (found in a traced forward pass). ``probe`` (inputs, optional) checks that
    the copy's forward equals the model's. "reinit": the named layers (names, 'outer/inner' paths, indices or
    layers) are drawn again from their own initializers, seeded from ``seed`` (same seed, same copy).
    "linearised": activations as identities, max-pooling as average (``KerasAdapter.linearised_copy``).
    """
    if rule not in MODIFY_RULES:
        raise BadInputError("rule", expected=f"one of {', '.join(MODIFY_RULES)}", got=repr(rule))
    _require_graph(model, "modified copies")
    _require_graph_model(model)
    if rule != "reinit" and layers:
        raise BadInputError("layers", expected=f"no layers for rule {rule!r} (it changes the whole model)",
                            got=f"{len(layers)} layer(s)", fix="pass layers only with rule='reinit'")
    if rule == "linearised":
        return KerasAdapter().linearised_copy(model)
    if rule == "reinit":
        return _reinit_copy(model, layers, seed)
    return _rule_copy(model, rule, probe)
