"""Modified copies of a Keras model: guided-backprop and deconvnet ReLUs, linearised activations, or chosen
layers' weights drawn again. The user's model is never touched.

Example:
    >>> import keras, numpy as np                                                    # doctest: +SKIP
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])  # doctest: +SKIP
    >>> guided = modified_copy(model, "guided")       # same forward, guided ReLU backward  # doctest: +SKIP
    >>> random = modified_copy(model, "reinit", layers=[-1], seed=0)     # the last layer re-drawn  # doctest: +SKIP

The rules of ``modified_copy`` are ``gradsight.adapters.common.MODIFY_RULES``; copies are built with
``clone_model`` from Functional and Sequential models (nested ones included) and get the model's weights. A
final softmax is kept: the passes of ``gradients.py`` step over it in the copy as in the model.
"""

from __future__ import annotations

import inspect
import math
import re
import zlib
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from ...errors import BadInputError, GradsightError, UnknownNameError, cause_of
from ..common import MODIFY_RULES
from .layers import as_batch, innermost_final_operation, require_graph, require_graph_model, resolve_layer, walk_layers
from .scores import is_softmax, is_softmax_operation

# --- guided and deconvnet copies --------------------------------------------------------------------------

_SCOPE = "gradsight_rule"  # name scope of the rule's own forward ops: the graph check skips them
_IN_SCOPE = re.compile(rf"{_SCOPE}(_\d+)?")
_RELU_OPS = {"Relu", "Relu6", "LeakyRelu"}
# A ReLU written otherwise (keras.ops.maximum(x, 0), ops.clip(x, 0, 6), ops.where(x > 0, x, 0)): a maximum with 0,
# a clip at 0 or a comparison with 0 (on either side) of a floating-point tensor that is not a scalar (an integer
# comparison is a loop counter's, a scalar one a predicate). Seen in the traced graph and in the bodies of its
# nested functions (tf.cond / tf.while_loop in a custom layer), where the 0 must be a constant of that body.
# Values: the inputs that can be the constant 0.
_GATE_OPS = {"Maximum": (0, 1), "ClipByValue": (1,), "Greater": (0, 1), "GreaterEqual": (0, 1), "Less": (0, 1),
             "LessEqual": (0, 1)}
_SMOOTH_OPS = {"Elu", "Selu", "Sigmoid", "Tanh", "Softplus", "Softsign", "Erf", "LogSoftmax", "Softmax"}
_ALIASES = {"silu": "silu (swish)", "hard_silu": "hard_silu (hard_swish)"}


def _ends_in_softmax(op) -> bool:
    """Whether the final operation may be the one softmax the model is allowed: a softmax activation or layer,
    keras.ops.softmax, or a Lambda (its content is unknown; the traced graph then allows one Softmax op)."""
    return is_softmax(getattr(op, "activation", None)) or isinstance(op, keras.layers.Lambda) \
        or is_softmax_operation(op)


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
    final = innermost_final_operation(model)
    found, other = 0, {}  # activation name -> where it is
    for path, layer in walk_layers(model):
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
            elif not (key == "activation" and layer is final and is_softmax(activation)):
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
        require_graph_model(layer, f"nested model {layer.name!r}")
    return _rebuilt(layer)


def _rebuilt(layer, edit=lambda config: config):
    """A new layer of ``layer``'s class from its config (changed by ``edit``), or one clear error. A Lambda
    keeps its live function: from_config would rebuild it from its bytecode, which safe mode refuses."""
    lambda_subclass = isinstance(layer, keras.layers.Lambda)
    if type(layer) is keras.layers.Lambda:
        shape = layer.get_config().get("output_shape")
        return keras.layers.Lambda(layer.function, output_shape=None if isinstance(shape, dict) else shape,
                                   mask=layer.mask, arguments=layer.arguments, name=layer.name,
                                   dtype=layer.dtype_policy)
    try:
        # (get_config raises too: Keras's automatic config cannot hold an __init__ argument such as a function)
        config = edit(layer.get_config())
        # the layer's own initializers, regularizers, constraints and activations, registered or not
        with keras.saving.custom_object_scope(_custom_objects(layer)):
            return layer.__class__.from_config(config)
    except MemoryError:
        raise
    except Exception as err:  # the layer's own get_config / from_config may raise anything
        raise BadInputError(f"layer {layer.name!r}", expected="a layer Keras can copy (get_config / from_config)",
                            got=f"{type(layer).__name__}: {_first_reason(err)}",
                            fix="use keras.layers.Lambda itself (gradsight reuses its function as it is)"
                                if lambda_subclass else
                                "give the layer a get_config() that lists its __init__ arguments") from None


def _first_reason(err: Exception) -> str:
    """The cause in a Keras error message: what follows "Exception encountered:" when Keras wraps the layer's
    own error (without the config it repeats), else its first paragraph."""
    text = str(err).strip()
    if "Exception encountered:" in text:
        text = text.split("Exception encountered:", 1)[1].strip()
    return cause_of(text.split(" using config=")[0] or err)


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
    """(kind, name) of every operation of one traced forward pass (tf.function), nested function bodies
    included; a ReLU gate written as ops is the kind "<op> with 0"."""
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in model.inputs]
    graph = tf.function(lambda *x: model(x[0] if len(x) == 1 else list(x), training=False)) \
        .get_concrete_function(*specs).graph
    bodies = _function_graphs(graph)
    ops = [(_kind(op), op.name) for op in graph.get_operations()]
    for function in graph.as_graph_def().library.function:
        name = function.signature.name
        if name in bodies:
            ops += [(_kind(op), f"{name}/{op.name}") for op in bodies[name].get_operations()]
        else:  # no graph of its own to read (TensorFlow keeps them privately): its node definitions
            constants = {node.name: node for node in function.node_def if node.op == "Const"}
            ops += [(_node_kind(node, constants), f"{name}/{node.name}") for node in function.node_def]
    return ops


def _function_graphs(graph) -> dict:
    """Graphs (with shapes and constants) of the functions ``graph`` calls, nested ones too, by name."""
    found, todo = {}, [graph]
    while todo:
        for name, function in getattr(todo.pop(), "_functions", {}).items():
            body = getattr(function, "graph", None)
            if name not in found and body is not None:
                found[name] = body
                todo.append(body)
    return found


def _kind(op) -> str:
    """The op's type, or "<type> with 0" for a maximum, clip or comparison of a float feature map with 0."""
    inputs = list(op.inputs)
    for i in _GATE_OPS.get(op.type, ()):
        if i < len(inputs) and _all_zero(tf.get_static_value(inputs[i])):
            data = inputs[0] if op.type == "ClipByValue" else inputs[1 - i]
            if data.dtype.is_floating and data.shape.rank != 0:
                return f"{op.type} with 0"
    return op.type


def _node_kind(node, constants: dict) -> str:
    """``_kind`` from a function body's node definitions (``constants``: its Const nodes by name): inputs by name
    ("node:output:index"), no shapes."""
    if node.op not in _GATE_OPS or not tf.dtypes.as_dtype(node.attr["T"].type).is_floating:
        return node.op
    for i in _GATE_OPS[node.op]:
        const = constants.get(node.input[i].split(":")[0]) if i < len(node.input) else None
        try:
            value = None if const is None else tf.make_ndarray(const.attr["value"].tensor)
        except Exception:  # a constant that is no array (variant, resource): not a 0
            value = None
        if _all_zero(value):
            return f"{node.op} with 0"
    return node.op


def _all_zero(value) -> bool:
    return value is not None and np.size(value) > 0 and bool(np.all(value == 0))


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
    final_softmax = int(_ends_in_softmax(innermost_final_operation(model)))
    relus, smooth, softmaxes = [], [], []
    for kind, name in _forward_ops(copy):
        if any(_IN_SCOPE.fullmatch(part) for part in name.split("/")):
            continue
        if kind in _RELU_OPS or kind.endswith(" with 0"):
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
        x = tf.convert_to_tensor(as_batch(model, probe)[:1])
        ours, theirs = np.asarray(copy(x, training=False)), np.asarray(model(x, training=False))
        if not np.allclose(ours, theirs, rtol=1e-5, atol=1e-6 * max(float(np.abs(theirs).max()), 1.0)):
            raise GradsightError(f"the {rule} copy's forward pass differs from the model's on the probe "
                                 f"(max difference {np.abs(ours - theirs).max():.3g}); please report this model")
    return copy


# --- linearised copies ------------------------------------------------------------------------------------


def _linear_layer(layer):
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.Softmax,
                          keras.layers.Activation)):
        return keras.layers.Activation("linear", name=layer.name)
    for pooling, average in ((keras.layers.MaxPooling2D, keras.layers.AveragePooling2D),
                             (keras.layers.MaxPooling1D, keras.layers.AveragePooling1D)):
        if isinstance(layer, pooling):
            config = layer.get_config()
            return average(pool_size=config["pool_size"], strides=config["strides"], padding=config["padding"],
                           name=layer.name)

    def linear(config):
        if "activation" in config and config["activation"] not in ("linear", None):
            config["activation"] = "linear"
        return config

    return _rebuilt(layer, linear)


def linearised_copy(model: keras.Model) -> keras.Model:
    """A copy with linear activations and average- instead of max-pooling, same weights: its gradients show
    every pixel a unit's field reaches (no ReLU switched off, no max routing the gradient to one input).

    Example:
        >>> linear = linearised_copy(model)       # model(x) is unchanged; linear(x) is affine in x  # doctest: +SKIP
    """
    clone = keras.models.clone_model(model, clone_function=_linear_layer, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def parameter_blocks(model: keras.Model) -> list[str]:
    """Layers with weights that can be drawn again (at least one has an initializer), top (logits) first: the
    blocks a sanity check re-initialises. Weights no block redraws are listed by ``kept_parameters``."""
    return [layer.name for layer in model.layers if _redrawable(layer)][::-1]


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
        return resolve_layer(model, entry)[0]
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


def _initializer(layer, variable):
    """The initializer ``layer`` draws ``variable`` from, or None when it has none (a LayerScale's bare
    weight, a Normalization layer's statistics, a custom layer's sublayers' weights)."""
    key = variable.name
    found = [getattr(layer, a) for a in (f"{key}_initializer", *_INITIALIZER_OF.get(key, ())) if hasattr(layer, a)]
    return found[0] if found and callable(found[0]) else None


def _leaves(layer, path: str) -> list[tuple[str, keras.layers.Layer]]:
    """(path, layer) of ``layer`` and of every layer nested in it as a model, models themselves left out."""
    if not isinstance(layer, keras.Model):
        return [(path, layer)]
    return [(f"{path}/{p}", leaf) for p, leaf in walk_layers(layer) if not isinstance(leaf, keras.Model)]


def _redrawable(layer) -> bool:
    return any(_initializer(leaf, v) is not None for _, leaf in _leaves(layer, layer.name) for v in leaf.weights)


def _unreachable(layer) -> list[str]:
    """Paths of the weights of ``layer`` (and of the layers nested in it) that no initializer redraws."""
    return [v.path for _, leaf in _leaves(layer, layer.name) for v in leaf.weights if _initializer(leaf, v) is None]


def kept_parameters(model: keras.Model, layers: Sequence, outside: bool = False) -> dict[str, list[str]]:
    """{layer path: the weights of that layer that re-initialising ``layers`` keeps as they are (no
    initializer of their layer draws them)}, layers with none left out. ``outside``: also, under "", every
    weight of the model that is in none of ``layers``.

    Example:
        >>> kept_parameters(keras.applications.ConvNeXtTiny(weights=None),
        ...                 ["convnext_tiny_stage_0_block_0_layer_scale"])              # doctest: +SKIP
        {'convnext_tiny_stage_0_block_0_layer_scale': ['convnext_tiny_stage_0_block_0_layer_scale/variable']}
    """
    layers = [layers] if isinstance(layers, (str, keras.layers.Layer)) else list(layers)
    paths = dict(walk_layers(model))
    chosen = list(dict.fromkeys(_layer_path(model, entry, paths) for entry in layers))
    kept, inside = {}, set()
    for path in chosen:
        found = _unreachable(paths[path])
        inside.update(id(v) for v in paths[path].weights)
        if found:
            kept[path] = found
    if outside:
        rest = [v.path for v in model.weights if id(v) not in inside]
        if rest:
            kept[""] = rest
    return kept


def _redraw(layer, path: str, seed: int) -> None:
    """Every weight of ``layer`` that has an initializer drawn again; the others are kept (``kept_parameters``
    names them)."""
    for variable in layer.weights:
        key = variable.name
        initializer = _initializer(layer, variable)
        if initializer is None:
            continue
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
    paths = dict(walk_layers(model))
    chosen = list(dict.fromkeys(_layer_path(model, entry, paths) for entry in layers))
    for path in chosen:  # before the copy: a refusal costs nothing
        if not _redrawable(paths[path]):
            bare = _unreachable(paths[path])
            got = f"{type(paths[path]).__name__} without any" if not bare else \
                f"{type(paths[path]).__name__} whose weights have no initializer ({_first(bare)})"
            raise BadInputError(f"layer {path!r}", expected="a layer with parameters to re-initialise (weights "
                                "with an initializer)", got=got, fix="pick a layer with weights")
    copy = keras.models.clone_model(model, clone_function=_clone_layer, recursive=True)
    _copy_weights(model, copy)
    copied = dict(walk_layers(copy))
    for path in chosen:
        for p, layer in _leaves(copied[path], path):
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
    "linearised": activations as identities, max-pooling as average (``linearised_copy``).
    """
    if rule not in MODIFY_RULES:
        raise BadInputError("rule", expected=f"one of {', '.join(MODIFY_RULES)}", got=repr(rule))
    require_graph(model, "modified copies")
    require_graph_model(model)
    if rule != "reinit" and layers:
        raise BadInputError("layers", expected=f"no layers for rule {rule!r} (it changes the whole model)",
                            got=f"{len(layers)} layer(s)", fix="pass layers only with rule='reinit'")
    if rule == "linearised":
        return linearised_copy(model)
    if rule == "reinit":
        return _reinit_copy(model, layers, seed)
    return _rule_copy(model, rule, probe)
