"""The model of a run, and how a worker elsewhere (a Ray actor) gets the same one.

Example:
    >>> loaded, recipe = resolve_model("efficientnet_lite0")      # doctest: +SKIP
    >>> recipe.load().name                                         # doctest: +SKIP
    'efficientnet_lite0'

A model is a name ``load_model`` knows, ``package.module:factory`` (a function with no arguments returning a
LoadedModel or a torch/Keras classifier, ImageNet preprocessing by default), a LoadedModel or a bare
framework model. Names travel to workers as names (each loads its own copy, nothing is downloaded); objects
travel pickled.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..models.spec import LoadedModel

_LIBRARY_PREFIXES = ("torchvision", "tv", "timm", "keras")


@dataclass(frozen=True)
class ModelRecipe:
    """A model name (and weights file) to load where the work runs, or the LoadedModel itself."""

    name: str | None = None
    weights: str | None = None
    loaded: LoadedModel | None = None

    def load(self) -> LoadedModel:
        return self.loaded if self.loaded is not None else load_named(self.name, self.weights)


def is_factory_path(name: str) -> bool:
    prefix, sep, rest = name.partition(":")
    return bool(sep and rest) and prefix not in _LIBRARY_PREFIXES and "." not in rest


def load_named(name: str, weights: str | Path | None = None) -> LoadedModel:
    """A model by registry name or by ``package.module:factory``; weights are never downloaded."""
    if not is_factory_path(name):
        from ..models.registry import load_model

        return load_model(name, weights=weights, download=False)
    if weights is not None:
        raise BadInputError(f"model {name!r}", expected="no --weights for a factory (it builds its own model)",
                            got=f"--weights {weights}", fix="load the weights inside the factory")
    module_name, _, factory_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BadInputError(f"model {name!r}", expected="an importable module before ':'",
                            got=f"{type(err).__name__}: {err}", fix="check the module path and PYTHONPATH") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise BadInputError(f"model {name!r}", expected=f"a function {factory_name!r} in {module_name}",
                            got="no such function", fix="check the name after ':'")
    built = factory()
    if isinstance(built, LoadedModel):
        return built
    from ..methods.saliency import as_loaded_model

    loaded = as_loaded_model(built)
    return LoadedModel(loaded.module, dataclasses.replace(loaded.spec, name=name, weights="from the factory"))


def resolve_model(model: Any, weights: str | Path | None = None) -> tuple[LoadedModel, ModelRecipe]:
    """(the model loaded here, the recipe that gives workers the same model)."""
    if isinstance(model, (str, Path)):
        name = str(model)
        weights_text = str(weights) if weights is not None else None
        return load_named(name, weights_text), ModelRecipe(name, weights_text)
    if weights is not None:
        raise BadInputError("weights", expected="a weights file only with a model name", got=str(weights),
                            fix="load the weights into your model before passing it")
    from ..methods.saliency import as_loaded_model

    loaded = as_loaded_model(model)
    return loaded, ModelRecipe(loaded=loaded)
