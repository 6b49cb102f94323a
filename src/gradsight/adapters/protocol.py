"""The one contract every framework adapter implements; methods reach a framework only through it.

Example:
    >>> from gradsight.adapters.discovery import adapter_for             # doctest: +SKIP
    >>> adapter = adapter_for(model)                             # a TorchAdapter or a KerasAdapter  # doctest: +SKIP
    >>> isinstance(adapter, ModelAdapter)                        # doctest: +SKIP
    True

Conventions shared by every method below:
- arrays cross as NumPy float32 in channels-last layout: inputs (N, H, W, C), layer maps (N, h, w, c);
- ``targets`` are class indices, ``None`` meaning the predicted class; ``score`` is "logit" (pre-softmax: a
  final softmax is stepped over), "prob" or "logprob";
- ``layer`` is a name (as ``layer_names`` lists), an index among the model's direct children, or the layer
  object; units are (row, col, channel);
- ``fast`` has one meaning everywhere: run an optimised graph that computes the same function, cached per
  model and rebuilt when the model changes (PyTorch: a private copy with BatchNorm folded into the
  convolutions, checked against the model; Keras: a compiled ``tf.function``). Results are equal to rounding;
  ``fast=False`` runs the model as it is;
- the model runs in inference mode (BatchNorm statistics, no dropout), and nothing of the user's model changes:
  weights, flags, hooks, gradients — also when a call fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..receptive.report import FieldReport
from .common import LayerGradient, ScoreGradient


@runtime_checkable
class ModelAdapter(Protocol):
    """What gradsight asks of a deep-learning framework."""

    #: "torch" or "keras": recorded in results, and the key of a method's ``frameworks``.
    name: str

    def predict(self, model: Any, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class scores (N, K), forward only, ``batch_size`` inputs at a time (occlusion, deletion curves)."""
        ...

    def score_gradient(self, model: Any, inputs: np.ndarray, targets: Sequence[int | None],
                       score: str = "logit", fast: bool = True) -> ScoreGradient:
        """d score[target] / d input (N, H, W, C), with the logits and the chosen targets."""
        ...

    def layer_gradient(self, model: Any, layer: Any, inputs: np.ndarray, targets: Sequence[int | None],
                       score: str = "logit") -> LayerGradient:
        """Activations of ``layer`` and the score's gradient with respect to them (Grad-CAM's inputs)."""
        ...

    def unit_gradients(self, model: Any, layer: Any, units: np.ndarray, inputs: np.ndarray, plans=None,
                       batch_size: int = 32, fast: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """d z[unit] / d input for units (U, 3) of one input (H, W, C): gradients (U, H, W, C), values (U,).

        ``plans``: None, or one ``CropPlan`` per unit (only the unit's cone is computed).
        """
        ...

    def support_map(self, model: Any, layer: Any, position: tuple[int, int], inputs: np.ndarray,
                    seed: int = 0) -> np.ndarray:
        """(H, W): sum over inputs (K, H, W, C) and channels of |d (sum_c w_c z[c, position]) / d input|."""
        ...

    def modified_copy(self, model: Any, rule: str, *, layers: Sequence[Any] = (), seed: int = 0,
                      probe: np.ndarray | None = None) -> Any:
        """A copy of ``model`` under ``rule`` (``common.MODIFY_RULES``): guided or deconvnet ReLU gradients,
        linearised activations, or ``layers`` re-initialised from ``seed``. The user's model is untouched."""
        ...

    def trace_fields(self, model: Any, input_shape: tuple[int, ...], name: str | None = None) -> FieldReport:
        """The analytic receptive field of every layer for an input of ``input_shape`` (channels, rows, cols)."""
        ...

    def resolve_layer(self, model: Any, layer: Any) -> tuple[str, Any]:
        """(name, layer object) for a name, an index among direct children, or a layer of the model."""
        ...

    def layer_names(self, model: Any) -> list[str]:
        """Every addressable layer name, in definition order."""
        ...

    def default_input_shape(self, model: Any) -> tuple[int, ...]:
        """(channels, rows, cols) the model is meant for, when the model says so; 224x224 otherwise."""
        ...
