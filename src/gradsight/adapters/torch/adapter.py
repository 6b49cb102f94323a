"""The PyTorch adapter: the ModelAdapter contract (``adapters/protocol.py``) for ``torch.nn.Module`` models.

Example:
    >>> import numpy as np, torch                                            # doctest: +SKIP
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))  # doctest: +SKIP
    >>> TorchAdapter().score_gradient(net, np.ones((1, 2, 2, 3), np.float32), [None]).gradient.shape
    (1, 2, 2, 3)

A facade: each method calls the module of its concern (gradients, folding, units, trace, modifiers).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..common import LayerGradient, ScoreGradient
from . import folding, gradients, modifiers, trace
from . import units as units_


class TorchAdapter:
    """The PyTorch implementation of ``ModelAdapter``; see ``adapters/protocol.py`` for each method's contract."""

    name = "torch"

    def predict(self, model: nn.Module, inputs: np.ndarray, batch_size: int = 64, fast: bool = False,
                near: np.ndarray | None = None) -> np.ndarray:
        """``fast``: the cached BatchNorm-folded copy, under ``torch.inference_mode``; ``near``: passes that
        recompute only the changed rectangles (``incremental``)."""
        return gradients.predict(model, inputs, batch_size, fast, near)

    def unchanged_during(self, model: nn.Module):
        """The folded copy's exact check of ``model`` (every weight) runs once in the block."""
        return folding.unchanged_during(model)

    def score_gradient(self, model: nn.Module, inputs: np.ndarray, targets, score: str = "logit",
                       fast: bool = True) -> ScoreGradient:
        return gradients.score_gradient(model, inputs, targets, score, fast)

    def layer_gradient(self, model: nn.Module, layer, inputs: np.ndarray, targets,
                       score: str = "logit", fast: bool = False) -> LayerGradient:
        """``fast`` changes nothing here: the layer's module must run as the user wrote it (no folded copy)."""
        return gradients.layer_gradient(model, layer, inputs, targets, score)

    def unit_gradients(self, model, layer, units, inputs, plans=None, batch_size=32, fast=True, spatial_axes=None):
        """``spatial_axes``: which axes of the layer's output are rows and columns (from the trace), for layers
        whose output is channels-last."""
        return units_.unit_gradients(model, layer, units, inputs, plans, batch_size, fast, spatial_axes)

    def support_map(self, model, layer, position, inputs, seed=0, spatial_axes=None):
        return units_.support_map(model, layer, position, inputs, seed, spatial_axes)

    def untraced_layer(self, model, layer, inputs):
        """(None, output shape) of a layer the trace could not follow, when its layout is known."""
        return units_.untraced_layer(model, layer, inputs)

    def modified_copy(self, model: nn.Module, rule: str, *, layers=(), seed: int = 0, probe=None) -> nn.Module:
        return modifiers.modified_copy(model, rule, layers=layers, seed=seed, probe=probe)

    def parameter_blocks(self, model: nn.Module) -> list[str]:
        return modifiers.parameter_blocks(model)

    def kept_parameters(self, model: nn.Module, layers, outside: bool = False) -> dict[str, list[str]]:
        return modifiers.kept_parameters(model, layers, outside)

    def trace_fields(self, model, input_shape, name=None):
        return trace.trace_fields(model, input_shape, name)

    def structure_key(self, model) -> tuple:
        """Everything but tensor values that decides the model's geometry (caches of fields key on it)."""
        return folding.structure_key(model)

    def resolve_layer(self, model, layer):
        return units_.resolve_module(model, layer)

    def layer_names(self, model) -> list[str]:
        return [n for n, _ in model.named_modules() if n]

    def default_input_shape(self, model) -> tuple[int, ...]:
        """(channels, rows, cols): the model's ``gradsight_input_shape`` or its first convolution's channels at 224."""
        shape = getattr(model, "gradsight_input_shape", None)
        if shape is not None:
            return tuple(shape)
        return (trace.first_conv_channels(model), 224, 224)
