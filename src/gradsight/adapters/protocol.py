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
  ``fast=False`` runs the model as it is. ``predict`` alone defaults to ``fast=False`` (forward-only scores are
  cheap to get exactly; callers with many passes, such as the deletion curves, ask for ``fast=True``);
- the model runs in inference mode (BatchNorm statistics, no dropout), and nothing of the user's model changes:
  weights, flags, hooks, gradients — also when a call fails.

One method is PyTorch-only and not part of ``ModelAdapter``: ``untraced_layer(model, layer, inputs)`` (see
``UntracedLayer``), the output grid of a layer the receptive-field trace could not follow (callers check for
it with ``hasattr``). Keras has no such method: there, a layer past an operation the trace refuses is refused
with the trace's message.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..receptive.report import FieldReport
from .common import LayerGradient, ScoreGradient


@runtime_checkable
class ModelAdapter(Protocol):
    """What gradsight asks of a deep-learning framework."""

    #: "torch" or "keras": recorded in results, and the key of a method's ``frameworks``.
    name: str

    def predict(self, model: Any, inputs: np.ndarray, batch_size: int = 64, fast: bool = False,
                near: np.ndarray | None = None) -> np.ndarray:
        """Class scores (N, K), forward only, ``batch_size`` inputs at a time (occlusion, deletion curves).
        ``fast``: PyTorch runs its BatchNorm-folded copy under inference mode, Keras a compiled tf.function.
        ``near``: one image (H, W, C) from which every input differs only inside a small rectangle (occlusion's
        windows); PyTorch's fast path then computes only what the rectangles reach (``incremental``), equal
        to rounding; Keras takes it as a hint and ignores it."""
        ...

    def unchanged_during(self, model: Any) -> AbstractContextManager:
        """A block in which ``model`` is taken as fixed (one gradsight call whose batches run back to back, no
        user code in between): the fast path's checks that its cache still fits the model run once in it
        (PyTorch: the folded copy's exact comparison of every weight; Keras checks only cheap structure, and
        its block does nothing). Between blocks every change to the model is seen."""
        ...

    def score_gradient(self, model: Any, inputs: np.ndarray, targets: Sequence[int | None],
                       score: str = "logit", fast: bool = True) -> ScoreGradient:
        """d score[target] / d input (N, H, W, C), with the logits and the chosen targets."""
        ...

    def layer_gradient(self, model: Any, layer: Any, inputs: np.ndarray, targets: Sequence[int | None],
                       score: str = "logit", fast: bool = False) -> LayerGradient:
        """Activations of ``layer`` and the score's gradient with respect to them (Grad-CAM's inputs).

        ``fast``: Keras compiles the pass (``tf.function``); PyTorch runs the user's modules either way (the
        folded copy has no BatchNorm modules to read), so the result is the same to rounding.
        """
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

    def parameter_blocks(self, model: Any) -> list[str]:
        """The blocks a sanity check re-initialises by default, top (logits) first: those with parameters that
        their own initialisers can draw again (PyTorch: direct children, stage sequences opened one level;
        Keras: the model's layers)."""
        ...

    def kept_parameters(self, model: Any, layers: Sequence[Any], outside: bool = False) -> dict[str, list[str]]:
        """{block: names of its parameters that ``modified_copy(model, "reinit", layers=...)`` keeps as they
        are} (PyTorch: not owned by a module with ``reset_parameters``; Keras: weights whose layer has no
        initializer for them); ``outside``: also, under "", the model's parameters in none of ``layers``."""
        ...

    def structure_key(self, model: Any) -> tuple:
        """Everything but weight values that decides the model's geometry (layer names, types, attributes,
        weight shapes): equal keys, equal receptive fields (caches of fields key on it)."""
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


@runtime_checkable
class UntracedLayer(Protocol):
    """The PyTorch adapter's extra: the output grid of a layer past an operation the trace refuses."""

    def untraced_layer(self, model: Any, layer: Any, inputs: np.ndarray) -> tuple[Any, tuple[int, int, int]]:
        """(spatial axes or None, (rows, cols, channels)) of ``layer``'s output, from one forward pass on
        ``inputs`` (H, W, C); layers whose layout cannot be known from their type are refused."""
        ...
