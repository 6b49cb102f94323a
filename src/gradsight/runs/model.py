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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..models.spec import LoadedModel


@dataclass(frozen=True)
class ModelRecipe:
    """A model name (and weights file) to load where the work runs, or the LoadedModel itself."""

    name: str | None = None
    weights: str | None = None
    loaded: LoadedModel | None = None

    def load(self) -> LoadedModel:
        return self.loaded if self.loaded is not None else load_named(self.name, self.weights)


def load_named(name: str, weights: str | Path | None = None, download: bool = False) -> LoadedModel:
    """A model by registry name or by ``package.module:factory`` (``models.registry.load_model``); weights are
    downloaded only with ``download=True``."""
    from ..models.registry import load_model

    return load_model(name, weights=weights, download=download)


def resolve_model(model: Any, weights: str | Path | None = None,
                  download: bool = False) -> tuple[LoadedModel, ModelRecipe]:
    """(the model loaded here, the recipe that gives workers the same model). ``download`` fetches a name's
    weights here, into the cache the workers then read (they never download)."""
    if isinstance(model, (str, Path)):
        name = str(model)
        weights_text = str(weights) if weights is not None else None
        return load_named(name, weights_text, download), ModelRecipe(name, weights_text)
    if weights is not None:
        raise BadInputError("weights", expected="a weights file only with a model name", got=str(weights),
                            fix="load the weights into your model before passing it")
    from ..models.registry import as_loaded_model

    loaded = as_loaded_model(model)
    return loaded, ModelRecipe(loaded=loaded)
