"""A Keras model's graph of layers: its one input and output, its layers by name, and what feeds its output.

Example:
    >>> model = keras_seed_cnn()                                          # doctest: +SKIP
    >>> require_graph(model)                        # (input, output) KerasTensors, or one clear error  # doctest: +SKIP
    >>> resolve_layer(model, 3)[0], layer_names(model)[:2]              # doctest: +SKIP
    ('L4', ['L1', 'L2'])
    >>> as_batch(model, np.zeros((2, 128, 128, 3))).shape        # refused: the model reads 1 channel  # doctest: +SKIP

Functional and Sequential models carry their graph (``inputs``, ``outputs``, each layer's tensors); a subclassed
model wires its layers inside ``call()``, which Keras does not record: whatever needs the graph refuses it by name.
"""

from __future__ import annotations

import keras
import numpy as np

from ...errors import BadInputError, UnknownNameError


def graph_io(model):
    """(inputs, outputs) of a functional or Sequential model; None for a model without a graph of layers
    (subclassed, or a Sequential model never built)."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return None
    return (inputs, outputs) if inputs and outputs else None


def require_graph(model, purpose: str = "node gradients and receptive fields"):
    """The model's single (input, output) pair; unbuilt, subclassed and multi-input/output models are refused."""
    if not isinstance(model, keras.Model):
        raise BadInputError("model", expected="a keras.Model", got=f"a {type(model).__name__}")
    io = graph_io(model)
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
    return inputs[0], outputs[0]


def is_graph_model(model) -> bool:
    """A Sequential or Functional model (what ``clone_model`` can copy layer by layer)."""
    return isinstance(model, keras.Sequential) or any(c.__name__ == "Functional" for c in type(model).__mro__)


def require_graph_model(model, what: str = "Keras model") -> None:
    """Refuse, by its class name, a model that cannot be copied layer by layer (a nested one too)."""
    if not isinstance(model, keras.Model):
        raise BadInputError(what, expected="a keras.Model", got=f"a {type(model).__name__}")
    if not is_graph_model(model):
        raise BadInputError(what, expected="a Functional or Sequential model (copies are built layer by layer)",
                            got=f"a subclassed model ({type(model).__name__}) whose call() gradsight cannot copy",
                            fix="rebuild it with keras.Model(inputs, outputs) or keras.Sequential")


def _describe(shape: tuple) -> str:
    """"1 channel at 128 x 128" for a channels-last (rows, cols, channels) shape."""
    *spatial, channels = shape
    where = " x ".join("any" if n is None else str(n) for n in spatial)
    return f"{channels} channel{'s' * (channels != 1)} at {where}"


def as_batch(model, inputs) -> np.ndarray:
    """``inputs`` as float32, refused in one line when the model's Input cannot take them (before Keras fails
    deep inside with a traceback). Models without a graph (subclassed) declare no Input: passed as they are."""
    array = np.asarray(inputs, dtype=np.float32)
    io = graph_io(model)
    if io is None or len(io[0]) != 1:
        return array
    declared, got = tuple(io[0][0].shape[1:]), tuple(array.shape[1:])
    if len(declared) == len(got) and all(d is None or d == g for d, g in zip(declared, got)):
        return array
    dims = ", ".join("any" if n is None else str(n) for n in declared)
    batch = f"arrays of shape (N, {dims}) (the model's Input, channels last)"
    if len(declared) != len(got) or len(declared) < 2:
        raise BadInputError("model input", expected=batch, got=f"shape {array.shape}",
                            fix="pass input the model was built for")
    if declared[-1] not in (None, got[-1]):
        colour = "greyscale" if declared[-1] == 1 else f"{declared[-1]}-channel"
        fix = (f"the model reads {colour} input: convert the images and pass them as arrays of that shape, "
               f"or use a model made for {got[-1]}-channel images")
    else:
        size = " x ".join(str(n) for n in declared[:-1])
        fix = (f"resize the input to {size} (e.g. preprocess=Preprocess(resize=({size.replace(' x ', ', ')}), "
               f"crop=None, ...)), or build the model on keras.Input(shape=(None, None, {declared[-1]}))")
    raise BadInputError("model input", expected=f"{_describe(declared)}: {batch}", got=_describe(got), fix=fix)


def producer(model, tensor):
    """The layer or ``keras.ops`` operation of ``model`` whose output is ``tensor``, or None."""
    for op in reversed(getattr(model, "operations", None) or model.layers):
        try:
            if op.output is tensor:
                return op
        except (AttributeError, ValueError, RuntimeError):  # shared layers have no single output
            continue
    return None


def final_operation(model):
    """(the operation making the model's single output, the one tensor it reads), or (None, None) when the
    output does not come from one layer or ``keras.ops`` call reading one tensor."""
    io = graph_io(model)
    if io is None or len(io[0]) != 1 or len(io[1]) != 1:
        return None, None
    op = producer(model, io[1][0])
    try:
        source = op.input if op is not None else None
    except (AttributeError, ValueError, RuntimeError):  # a shared layer has no single input
        source = None
    return (op, source) if isinstance(source, keras.KerasTensor) else (None, None)


def innermost_final_operation(model):
    """The operation making the model's output, looking inside a nested model that makes it; or None."""
    io = graph_io(model)
    op = producer(model, io[1][0]) if io is not None and len(io[1]) == 1 else None
    return innermost_final_operation(op) if isinstance(op, keras.Model) else op


def _own_layers(model) -> list:
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def layer_names(model) -> list[str]:
    """The names of the model's own layers (input layers left out), in definition order."""
    return [layer.name for layer in _own_layers(model)]


def resolve_layer(model, layer):
    """(name, layer) for a name, an index among the model's layers (input layers left out) or a layer of it."""
    layers = _own_layers(model)
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


def walk_layers(model, prefix: str = ""):
    """(path, layer) for every layer, nested models included ('outer/inner'), input layers left out."""
    for layer in _own_layers(model):
        path = prefix + layer.name
        yield path, layer
        if isinstance(layer, keras.Model):
            yield from walk_layers(layer, path + "/")


def times_used(model, name: str) -> int:
    """How often the model's own graph calls the layer (the layer's ``output`` is only its first call)."""
    if isinstance(model, keras.Sequential):
        return 1
    try:
        entries = model.get_config().get("layers", [])
    except (NotImplementedError, TypeError, ValueError):
        return 1
    return next((len(e.get("inbound_nodes", [])) or 1 for e in entries if e.get("name") == name), 1)


def _frozen(value):
    """A hashable, comparable form of a configuration (dicts, lists, numbers, strings)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return (type(value).__qualname__, repr(value))  # an address in a repr only makes the key miss: safe


def structure_key(model) -> tuple:
    """Everything but weight values that decides a model's geometry: the graph's configuration (every layer's
    name, class and config, nested models included, and how they are wired) and the weights' shapes. A layer
    edited in place (``layer.strides = ...``) shows in its config, so a cache keyed on this sees the change.

    Example:
        >>> key = structure_key(model)                                           # doctest: +SKIP
        >>> model.set_weights([w * 2 for w in model.get_weights()])                # doctest: +SKIP
        >>> structure_key(model) == key               # new weights, same geometry   # doctest: +SKIP
        True
    """
    try:
        config = model.get_config()  # functional and Sequential: every layer's config and the wiring
    except (NotImplementedError, TypeError, ValueError):  # subclassed models need not have a config
        config = None
    layers = tuple((path, type(layer), _frozen(_config(layer)) if config is None else None,
                    tuple((v.path, tuple(v.shape), str(v.dtype)) for v in layer.weights))
                   for path, layer in walk_layers(model))
    return type(model), _frozen(config), layers


def _config(layer):
    try:
        return layer.get_config()
    except (NotImplementedError, TypeError, ValueError):
        return None
