"""Loading a model: two verbs, ``load_model`` for names and ``as_loaded_model`` for anything a user passes.

Example:
    >>> model = load_model("efficientnet_lite0")        # embedded weights, no download  # doctest: +SKIP
    >>> model.spec.preprocess.interpolation                                               # doctest: +SKIP
    'bicubic'
    >>> as_loaded_model("seed-cnn", architecture_only=True).spec.input_shape             # doctest: +SKIP
    (1, 128, 128)

``load_model(name)`` builds a named model in eval mode with its weights, preprocessing and class names.
``as_loaded_model(model)`` takes a name (through ``load_model``), a ``LoadedModel`` (returned as it is) or a
``torch.nn.Module`` / ``keras.Model`` (ImageNet preprocessing unless ``preprocess`` is given) and returns a
LoadedModel. Both take ``architecture_only=True`` for receptive fields and node gradients: the network alone,
random weights where a name has no seeded ones (geometry does not depend on weights), and the input shape the
name's preprocessing feeds it (a framework model: its declared input, else 224 x 224).

Names: ``efficientnet_lite0`` (the embedded default), ``resnet50``, any torchvision classifier as
``torchvision:NAME`` and any timm model as ``timm:NAME`` (a bare name is looked up in both); Keras models as
``keras:resnet50``, ``keras:seed-cnn``, ``keras:efficientnet_lite0`` (the embedded model converted to Keras, its
weights included) or ``keras:NAME`` of keras.applications; the seed CNNs ``seed-cnn`` and
``seed-cnn-torch``; and ``package.module:factory``, a function called with no arguments (see ``factory``).
Weights never download unless ``download=True``; ``weights=FILE`` loads a local state dict with
``weights_only=True``. One name is one network: with or without ``architecture_only`` a name builds the same
architecture. The frameworks' halves are ``adapters.torch.models.load_torch_model`` and
``adapters.keras.models.load_keras_model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..adapters.discovery import adapter_for
from ..preprocess import Preprocess
from .factory import factory_model, is_factory_path
from .names import CURATED, DEFAULT_MODEL, SEED_NETWORKS  # noqa: F401  (the names this module resolves)
from .spec import LoadedModel, ModelSpec, imagenet_preprocess


def load_model(name: str = DEFAULT_MODEL, *, weights: str | Path | None = None, download: bool = False,
               architecture_only: bool = False) -> LoadedModel:
    """The named model in eval mode with its weights, preprocessing and class names.

    ``architecture_only``: the network without its weights (``weights`` and ``download`` are not used), with
    the input shape of its published preprocessing.
    """
    if name.startswith("keras:"):
        from ..adapters.keras.models import load_keras_model

        return load_keras_model(name, weights=weights, download=download, architecture_only=architecture_only)
    if is_factory_path(name):
        return factory_model(name, weights, architecture_only=architecture_only)
    from ..adapters.torch.models import load_torch_model

    return load_torch_model(name, weights=weights, download=download, architecture_only=architecture_only)


def as_loaded_model(model: Any, *, preprocess: Preprocess | None = None,
                    architecture_only: bool = False) -> LoadedModel:
    """A LoadedModel from a name, a LoadedModel, or a bare framework model (ImageNet preprocessing by default).

    ``preprocess`` replaces the model's own preprocessing. ``architecture_only``: a name is built without
    weights, and a bare framework model records the input shape it is meant for.
    """
    if isinstance(model, str):
        model = load_model(model, architecture_only=architecture_only)
    if isinstance(model, LoadedModel):
        if preprocess is not None:
            model = LoadedModel(model.module, ModelSpec(model.name, model.spec.framework, preprocess,
                                                        model.class_names, model.spec.weights))
        return model
    adapter = adapter_for(model)  # raises a clear error for unsupported objects
    shape = tuple(adapter.default_input_shape(model)) if architecture_only else None
    spec = ModelSpec(type(model).__name__, adapter.name, preprocess or imagenet_preprocess(), input_shape=shape)
    return LoadedModel(model, spec)
