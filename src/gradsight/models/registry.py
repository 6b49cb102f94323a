"""Model names the CLI and ``load_model`` understand.

Example:
    >>> model = load_model("efficientnet_lite0")        # embedded weights, no download  # doctest: +SKIP
    >>> model.spec.preprocess.interpolation                                               # doctest: +SKIP
    'bicubic'

Names: ``efficientnet_lite0`` (the embedded default), ``resnet50``, any torchvision classifier as
``torchvision:NAME`` and any timm model as ``timm:NAME`` (a bare name is looked up in both); Keras models as
``keras:resnet50``, ``keras:seed-cnn`` or ``keras:NAME`` of keras.applications. Weights never
download unless ``download=True``; ``weights=FILE`` loads a local state dict with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

from .spec import LoadedModel

#: Named models with bundled specs; more come from torchvision and timm by name.
CURATED = ("efficientnet_lite0", "resnet50")
DEFAULT_MODEL = "efficientnet_lite0"


def available_models() -> tuple[str, ...]:
    """The curated names; ``torchvision:NAME`` and ``timm:NAME`` reach the rest."""
    return CURATED


def load_model(name: str = DEFAULT_MODEL, *, weights: str | Path | None = None,
               download: bool = False) -> LoadedModel:
    """Build the named model in eval mode with its weights, preprocessing and class names."""
    if name.startswith("keras:"):
        from ..adapters.keras_models import load_keras_model

        return load_keras_model(name, weights=weights, download=download)
    from ..adapters.torch_models import load_torch_model

    return load_torch_model(name, weights=weights, download=download)


def load_network(name: str) -> LoadedModel:
    """A network for receptive fields and node gradients: weights are not needed (random ones are used)."""
    if name.startswith("keras:"):
        from ..adapters.keras_models import load_keras_model

        return load_keras_model(name, architecture_only=True)
    from ..adapters.torch_models import build_torch_network

    return build_torch_network(name)
