"""Analytic receptive fields of a model (any name or model ``models.registry.as_loaded_model`` takes).

Example:
    >>> import gradsight                                            # doctest: +SKIP
    >>> report = gradsight.receptive_field("seed-cnn")               # TF 'same' padding, 128x128x1 input
    >>> report["L6"].rect((0, 0))                                    # doctest: +SKIP
    ((0, 23), (0, 23))
"""

from __future__ import annotations

import weakref
from typing import Any

from ..adapters.discovery import adapter_for
from ..errors import BadInputError, UnsupportedGeometryError
from ..models.registry import as_loaded_model
from ..models.spec import LoadedModel
from .report import FieldReport

_REPORTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
    network = as_loaded_model(model, architecture_only=True)
    shape = input_shape_for(network, input_size)
    adapter = adapter_for(network.module)
    # The report is reused only for the same architecture: module names and types, their attributes (stride,
    # padding, ...) and tensor shapes (weights do not change a geometry). Adapters without such a key fall
    # back to the number of layers.
    structure = getattr(adapter, "structure_key", None)
    key = (shape, structure(network.module) if structure else len(adapter.layer_names(network.module)))
    cached = _REPORTS.get(network.module)
    if cached is not None and cached[0] == key:
        if isinstance(cached[1], tuple):
            raise _refusal(*cached[1])
        return cached[1]
    try:
        report = adapter.trace_fields(network.module, shape, name=network.name)
    except UnsupportedGeometryError as err:  # a refusal is an answer too (with the fields it found before)
        # the message, not the exception: its traceback would keep the model alive in this weak-keyed cache
        _REPORTS[network.module] = (key, (str(err), getattr(err, "partial", None)))
        raise
    _REPORTS[network.module] = (key, report)
    return report


def _refusal(message: str, partial: FieldReport | None) -> UnsupportedGeometryError:
    err = UnsupportedGeometryError(message)
    err.partial = partial  # the fields of the layers that ran before the refused operation
    return err
