"""gradsight: what a convolutional network looks at, and what each of its units can see.

Example:
    >>> import gradsight
    >>> result = gradsight.saliency("efficientnet_lite0")      # bundled ouzel.png, no download  # doctest: +SKIP
    >>> result.top_k(0, 1)                                      # doctest: +SKIP
    [(20, 'water ouzel, dipper', 0.959...)]

``import gradsight`` imports no deep-learning framework; the adapters load them when a model needs one.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "saliency": "gradsight.methods.saliency",
    "SaliencyResult": "gradsight.results",
    "load_model": "gradsight.models.registry",
    "available_models": "gradsight.models.registry",
    "LoadedModel": "gradsight.models.spec",
    "ModelSpec": "gradsight.models.spec",
    "Preprocess": "gradsight.preprocess",
    "load_image": "gradsight.images",
    "example_image_path": "gradsight.images",
    "save_saliency": "gradsight.outputs",
    "saliency_figure": "gradsight.plotting",
    "node_gradient": "gradsight.methods.node_gradient",
    "node_gradients": "gradsight.methods.node_gradient",
    "receptive_field": "gradsight.methods.fields",
    "chain_field": "gradsight.receptive.algebra",
    "measure_field": "gradsight.methods.measured_field",
    "compare_fields": "gradsight.methods.measured_field",
    "effective_receptive_field": "gradsight.methods.measured_field",
    "node_gradient_figure": "gradsight.plotting_fields",
    "field_grid_figure": "gradsight.plotting_fields",
    "strongest_units": "gradsight.plotting_fields",
    "seed_cnn": "gradsight.adapters.torch_zoo",
    "GradsightError": "gradsight.errors",
    "BadInputError": "gradsight.errors",
    "UnknownNameError": "gradsight.errors",
    "WeightsUnavailableError": "gradsight.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradsight' has no attribute {name!r}")


def __dir__():
    return __all__
