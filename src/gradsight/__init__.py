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
    "attribute": "gradsight.methods.attribute",
    "list_methods": "gradsight.methods.registry",
    "register_method": "gradsight.methods.registry",
    "AttributionResult": "gradsight.results",
    "attribution_figure": "gradsight.rendering.attribution",
    "save_attributions": "gradsight.rendering.attribution",
    "explore": "gradsight.explorer",
    "sanity_check": "gradsight.evaluation.sanity",
    "faithfulness": "gradsight.evaluation.faithfulness",
    "sanity_figure": "gradsight.rendering.evaluation",
    "similarity_curves_figure": "gradsight.rendering.evaluation",
    "faithfulness_figure": "gradsight.rendering.evaluation",
    "SaliencyResult": "gradsight.results",
    "load_model": "gradsight.models.registry",
    "LoadedModel": "gradsight.models.spec",
    "ModelSpec": "gradsight.models.spec",
    "Preprocess": "gradsight.preprocess",
    "load_image": "gradsight.images",
    "example_image_path": "gradsight.images",
    "save_saliency": "gradsight.rendering.saliency_files",
    "saliency_figure": "gradsight.rendering.saliency",
    "node_gradient": "gradsight.receptive.node_gradient",
    "node_gradients": "gradsight.receptive.node_gradient",
    "receptive_field": "gradsight.receptive.analytic",
    "chain_field": "gradsight.receptive.algebra",
    "measure_field": "gradsight.receptive.measured",
    "compare_fields": "gradsight.receptive.measured",
    "effective_receptive_field": "gradsight.receptive.measured",
    "node_gradient_figure": "gradsight.rendering.fields",
    "field_grid_figure": "gradsight.rendering.fields",
    "strongest_units": "gradsight.receptive.node_gradient",
    "seed_cnn": "gradsight.adapters.torch.zoo",
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
