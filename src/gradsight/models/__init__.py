"""Models as users have them: named models with their preprocessing and class names, or any module."""

from .registry import available_models, load_model
from .spec import LoadedModel, ModelSpec, imagenet_preprocess

__all__ = ["LoadedModel", "ModelSpec", "available_models", "imagenet_preprocess", "load_model"]
