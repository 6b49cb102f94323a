"""Models as users have them: named models with their preprocessing and class names, or any module."""

from .spec import LoadedModel, ModelSpec, imagenet_preprocess
from .registry import available_models, load_model

__all__ = ["LoadedModel", "ModelSpec", "available_models", "imagenet_preprocess", "load_model"]
