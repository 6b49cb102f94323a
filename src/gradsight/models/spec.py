"""What a model needs besides its weights: preprocessing, class names, and a name to report.

Example:
    >>> spec = ModelSpec("my_net", framework="torch", preprocess=imagenet_preprocess())
    >>> spec.preprocess.crop
    224
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..preprocess import Preprocess


def imagenet_preprocess(resize: int = 256, crop: int = 224, interpolation: str = "bilinear") -> Preprocess:
    """The classic torchvision ImageNet preprocessing (resize 256, centre crop 224, ImageNet mean/std)."""
    return Preprocess(resize=resize, crop=crop, interpolation=interpolation,
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def plain_preprocess(channels: int) -> Preprocess:
    """No resizing, no normalisation (mean 0, std 1) for a ``channels``-channel model: the seed CNNs' and a
    non-RGB factory network's preprocessing."""
    return Preprocess(resize=None, crop=None, mean=(0.0,) * channels, std=(1.0,) * channels)


@dataclass(frozen=True)
class ModelSpec:
    """How to feed a model and read its outputs; ``weights`` says where the weights came from."""

    name: str
    framework: str
    preprocess: Preprocess
    class_names: tuple[str, ...] | None = None
    weights: str = "user-supplied"
    input_shape: tuple[int, ...] | None = None  # (channels, rows, cols) the model is meant for

    def model_input_shape(self) -> tuple[int, ...] | None:
        """(channels, rows, cols) from ``input_shape`` or, for RGB classifiers, from the preprocessing crop."""
        if self.input_shape is not None:
            return self.input_shape
        size = self.preprocess.input_size
        return (len(self.preprocess.mean), *size) if size else None


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A framework model together with its spec; what ``load_model`` returns and ``saliency`` accepts."""

    module: Any
    spec: ModelSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.spec.class_names
