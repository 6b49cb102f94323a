"""What the Keras adapter keeps per model (passes, compiled functions, partial models, how its output reads):
dropped when a layer of the model is edited in place, and never keeping a dropped model alive.

Example:
    >>> revalidate(model)               # at each entry point: a layer edited since? start afresh  # doctest: +SKIP
    >>> passes = model_cache(model, "passes")           # this model's dict for one concern  # doctest: +SKIP

Weights need no such check: compiled passes read the model's variables, whatever their values now. A layer's
plain public attributes do (``strides``, ``padding``, ``activation`` by identity, ...): a ``tf.function``
traced before ``layer.activation = linear`` would still compute the old activation, and a pass built before a
Dense got a softmax would not step over it. Comparing them costs about 1.5 ms on ResNet50.
"""

from __future__ import annotations

import weakref

from .layers import walk_layers

_SCALARS = frozenset({bool, int, float, str, type(None)})

# model -> (layer signature, {concern: dict}). The dicts' values must not refer to the model (only to its layers,
# or weakly): a WeakKeyDictionary value that refers to its key keeps the key alive for ever.
_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layer_signature(model) -> tuple:
    """Every layer's path, type and plain public attributes (callables, such as an activation, by identity)."""
    signature = []
    for path, layer in walk_layers(model):
        items = []
        for key, value in vars(layer).items():
            if key[0] == "_":  # Keras' own bookkeeping (trainable flags, trackers, locks) does not change a pass
                continue
            if _plain(value):
                items.append((key, value))
            elif callable(value):
                items.append((key, id(value)))
        signature.append((path, type(layer), tuple(items)))
    return tuple(signature)


def _plain(value) -> bool:
    return type(value) in _SCALARS or (type(value) is tuple and all(_plain(v) for v in value))


def revalidate(model) -> None:
    """Drop everything cached for ``model`` when one of its layers changed since it was cached."""
    signature = layer_signature(model)
    entry = _CACHES.get(model)
    if entry is None or entry[0] != signature:
        _CACHES[model] = (signature, {})


def model_cache(model, concern: str) -> dict:
    """The model's cache for one concern (call ``revalidate`` first, once per entry point)."""
    entry = _CACHES.get(model)
    if entry is None:
        entry = _CACHES[model] = (layer_signature(model), {})
    return entry[1].setdefault(concern, {})
