"""Turning what users pass (paths, photos, arrays, tensors) into one float32 NHWC batch.

Example:
    >>> from gradsight.models import imagenet_preprocess
    >>> batch = prepare_inputs(None, imagenet_preprocess())   # None: the bundled ouzel.png
    >>> batch.arrays.shape, batch.sources[0].endswith("ouzel.png")
    ((1, 224, 224, 3), True)

Photos (paths, ``Photo``, PIL images, uint8 HxWx3 arrays) are preprocessed with the model's preprocessing.
Float arrays (H, W, C) / (N, H, W, C) and framework tensors (N, C, H, W) are taken as model input as they are.
Every photo is read and checked before any gradient is computed, so a bad file fails before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .adapters import is_framework_tensor, tensor_to_array
from .errors import BadInputError
from .images import Photo, example_image_path, load_image, photo_from_image
from .preprocess import Geometry, Preprocess


@dataclass(frozen=True)
class Batch:
    arrays: np.ndarray  # (N, H, W, C) float32, model input
    sources: tuple[str | None, ...]
    geometries: tuple[Geometry | None, ...]
    conversions: tuple[str | None, ...]
    photos: tuple  # PIL RGB images, None for model-input arrays


def _as_photo(item) -> Photo | None:
    if isinstance(item, (str, Path)):
        return load_image(item)
    if isinstance(item, Photo):
        return item
    if isinstance(item, Image.Image):
        return photo_from_image(item, "<PIL image>")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        if item.ndim != 3 or item.shape[2] != 3:
            raise BadInputError("uint8 image array", expected="shape (height, width, 3)", got=f"{item.shape}",
                                fix="pass an RGB photo, or float32 model input")
        return photo_from_image(Image.fromarray(item), "<array>")
    return None


def _as_model_input(item) -> np.ndarray:
    if is_framework_tensor(item):
        arrays = tensor_to_array(item)
    elif isinstance(item, np.ndarray) and np.issubdtype(item.dtype, np.floating):
        arrays = item[None] if item.ndim == 3 else item
        if arrays.ndim != 4:
            raise BadInputError("input array", expected="shape (H, W, C) or (N, H, W, C)", got=f"{item.shape}")
        arrays = arrays.astype(np.float32, copy=True)
    else:
        raise BadInputError("input", expected="an image path, a PIL image, a uint8 HxWx3 array, a float "
                            "model-input array (N, H, W, C) or a tensor (N, C, H, W)",
                            got=f"{type(item).__name__}" + (f" of dtype {item.dtype}" if hasattr(item, "dtype")
                                                           else ""))
    if not np.isfinite(arrays).all():
        bad = int((~np.isfinite(arrays)).sum())
        raise BadInputError("input array", expected="finite values", got=f"{bad} NaN or infinite values",
                            fix="clean or re-create the input")
    return arrays


def prepare_inputs(images, preprocess: Preprocess) -> Batch:
    """Load, check and preprocess ``images`` (one item or a list) into a Batch."""
    if images is None:
        images = [example_image_path()]
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise BadInputError("images", expected="at least one image", got="an empty list")
    arrays, sources, geometries, conversions, photos = [], [], [], [], []
    for item in images:
        photo = _as_photo(item)
        if photo is None:
            block = _as_model_input(item)
            arrays.extend(block)
            sources += [None] * len(block)
            geometries += [None] * len(block)
            conversions += [None] * len(block)
            photos += [None] * len(block)
            continue
        arrays.append(preprocess(photo))
        sources.append(photo.source)
        geometries.append(preprocess.geometry(photo.size))
        conversions.append(photo.converted_from)
        photos.append(photo.image)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise BadInputError("inputs", expected="one model-input shape for the whole batch",
                            got=f"shapes {sorted(shapes)}", fix="use a preprocessing with a fixed crop")
    return Batch(np.stack(arrays).astype(np.float32, copy=False), tuple(sources), tuple(geometries),
                 tuple(conversions), tuple(photos))
