"""Analytic receptive fields of a model, and resolving what users pass as a network.

Example:
    >>> import gradsight                                            # doctest: +SKIP
    >>> report = gradsight.receptive_field("seed-cnn")               # TF 'same' padding, 128x128x1 input
    >>> report["L6"].rect((0, 0))                                    # doctest: +SKIP
    ((0, 23), (0, 23))
"""

from __future__ import annotations

import weakref
from typing import Any

from ..adapters import adapter_for
from ..errors import BadInputError
from ..models.spec import LoadedModel
from ..receptive.report import FieldReport

_REPORTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def as_network(model: Any) -> LoadedModel:
    """A LoadedModel from a network name (seed-cnn, seed-cnn-torch, torchvision/timm names, pkg.mod:factory),
    a LoadedModel, or a framework model."""
    if isinstance(model, str):
        from ..models.registry import load_network

        return load_network(model)
    if isinstance(model, LoadedModel):
        return model
    from ..models.spec import ModelSpec
    from .saliency import as_loaded_model

    loaded = as_loaded_model(model)
    shape = adapter_for(model).default_input_shape(model)
    spec = loaded.spec
    return LoadedModel(model, ModelSpec(spec.name, spec.framework, spec.preprocess, spec.class_names,
                                        spec.weights, tuple(shape)))


def input_shape_for(network: LoadedModel, input_size: tuple[int, ...] | None) -> tuple[int, ...]:
    """(channels, rows, cols) to trace: the user's rows/cols, or the network's own input shape."""
    shape = network.spec.model_input_shape()
    if input_size is not None:
        size = tuple(int(n) for n in input_size)
        if len(size) != 2 or min(size) < 1:
            raise BadInputError("input size", expected="two positive numbers: rows cols", got=str(input_size))
        channels = shape[0] if shape else 3
        return (channels, *size)
    if shape is None:
        raise BadInputError("input size", expected="an input size for this model", got="none known",
                            fix="pass input_size=(rows, cols)")
    return tuple(shape)


def receptive_field(model: Any, input_size: tuple[int, int] | None = None) -> FieldReport:
    """Size, effective stride and padding, and unit rectangles of every layer of ``model``, analytically."""
    network = as_network(model)
    shape = input_shape_for(network, input_size)
    adapter = adapter_for(network.module)
    key = (shape, len(adapter.layer_names(network.module)))
    cached = _REPORTS.get(network.module)
    if cached is not None and cached[0] == key:
        return cached[1]
    report = adapter.trace_fields(network.module, shape, name=network.name)
    _REPORTS[network.module] = (key, report)
    return report
