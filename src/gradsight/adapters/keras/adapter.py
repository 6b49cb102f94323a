"""The Keras 3 adapter (TensorFlow backend): the ModelAdapter contract (``adapters/protocol.py``) for ``keras.Model``.

Example:
    >>> import keras, gradsight                                                      # doctest: +SKIP
    >>> model = keras.applications.ResNet50(weights=None)                            # doctest: +SKIP
    >>> KerasAdapter().score_gradient(model, x, [None]).gradient.shape               # doctest: +SKIP
    (1, 224, 224, 3)

A facade: each method calls the module of its concern (layers, scores and gradients, units, modifiers, trace).
Only ``discovery.adapter_for`` imports it; the modules never do. Keras works channels-last, gradsight's boundary
layout, so arrays pass as they are; models run with ``training=False`` and nothing on them changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from ...receptive.report import FieldReport
from ..common import LayerGradient, ScoreGradient
from . import gradients, modifiers, trace
from . import layers as layers_
from . import units as units_


class KerasAdapter:
    """The Keras implementation of ``ModelAdapter``; see ``adapters/protocol.py`` for each method's contract."""

    name = "keras"

    def predict(self, model: keras.Model, inputs: np.ndarray, batch_size: int = 64, fast: bool = False,
                near: np.ndarray | None = None) -> np.ndarray:
        """``fast``: a ``tf.function`` compiled once per model (``fast=False`` runs eagerly); ``near`` is a hint
        Keras does not use (every pass is a whole one)."""
        return gradients.predict(model, inputs, batch_size, fast)

    def unchanged_during(self, model: keras.Model):
        """Nothing to hold: the compiled passes read the weights live, and their cache checks only structure."""
        return contextlib.nullcontext()

    def score_gradient(self, model: keras.Model, inputs: np.ndarray, targets: Sequence[int | None],
                       score: str = "logit", fast: bool = True) -> ScoreGradient:
        """``fast``: a ``tf.function`` compiled once per model and score (``fast=False`` runs eagerly)."""
        return gradients.score_gradient(model, inputs, targets, score, fast)

    def layer_gradient(self, model: keras.Model, layer: Any, inputs: np.ndarray, targets: Sequence[int | None],
                       score: str = "logit", fast: bool = False) -> LayerGradient:
        """``fast``: a ``tf.function`` compiled once per model, layer and score (``fast=False`` runs eagerly)."""
        return gradients.layer_gradient(model, layer, inputs, targets, score, fast)

    def unit_gradients(self, model: keras.Model, layer: Any, units: np.ndarray, inputs: np.ndarray, plans=None,
                       batch_size: int = 32, fast: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``fast``: a ``tf.function`` compiled once per model and layer (``fast=False`` runs eagerly)."""
        return units_.unit_gradients(model, layer, units, inputs, plans, batch_size, fast)

    def support_map(self, model: keras.Model, layer: Any, position: tuple[int, int], inputs: np.ndarray,
                    seed: int = 0) -> np.ndarray:
        return units_.support_map(model, layer, position, inputs, seed)

    def modified_copy(self, model: keras.Model, rule: str, *, layers: Sequence[Any] = (), seed: int = 0,
                      probe: np.ndarray | None = None) -> keras.Model:
        return modifiers.modified_copy(model, rule, layers=layers, seed=seed, probe=probe)

    def parameter_blocks(self, model: keras.Model) -> list[str]:
        return modifiers.parameter_blocks(model)

    def kept_parameters(self, model: keras.Model, layers: Sequence[Any], outside: bool = False) -> dict[str, list[str]]:
        return modifiers.kept_parameters(model, layers, outside)

    def trace_fields(self, model: keras.Model, input_shape: tuple[int, ...], name: str | None = None) -> FieldReport:
        return trace.trace_fields(model, input_shape, name)

    def structure_key(self, model: keras.Model) -> tuple:
        """Everything but weight values that decides the model's geometry (caches of fields key on it)."""
        return layers_.structure_key(model)

    def resolve_layer(self, model: keras.Model, layer: Any) -> tuple[str, keras.layers.Layer]:
        return layers_.resolve_layer(model, layer)

    def layer_names(self, model: keras.Model) -> list[str]:
        return layers_.layer_names(model)

    def default_input_shape(self, model: keras.Model) -> tuple[int, ...]:
        """(channels, rows, cols) of the model's Input; 224 for a size it leaves open."""
        model_input, _ = layers_.require_graph(model)
        shape = model_input.shape  # (None, rows, cols, channels)
        return (shape[-1], *(n if n is not None else 224 for n in shape[1:-1]))
