"""Turning what users pass (paths, photos, arrays, tensors) into one float32 NHWC batch.

Example:
    >>> from gradsight.models.spec import imagenet_preprocess
    >>> batch = prepare_inputs(None, imagenet_preprocess())   # None: the bundled ouzel.png
    >>> batch.arrays.shape, batch.sources[0].endswith("ouzel.png"), batch.kinds
    ((1, 224, 224, 3), True, ('photo',))

What an input is, is never guessed (``input_kind``):

- paths, ``Photo`` and PIL images are photos; so are uint8 arrays (H, W, 3) / (N, H, W, 3) and uint8 torch
  tensors (3, H, W), (H, W, 3), (N, 3, H, W) or (N, H, W, 3) (a layout that fits both readings is refused);
- float arrays (H, W, C) / (N, H, W, C) and float tensors (N, C, H, W) (TensorFlow: N, H, W, C) are model
  input, taken as they are — unless they could also be a photo: 3 channels with every value in 0..255
  (which includes 0..1). Those are refused with both readings named, and the caller says which:
  ``input_kind="model_input"`` (already preprocessed), ``"photo"`` (values 0..255, as ``np.asarray(img)``
  gives) or ``"photo01"`` (values 0..1, as torchvision's ``ToTensor`` gives). Normalised input (values below
  0, e.g. after mean/std normalisation) is accepted as model input without a word.

Photos are preprocessed with the model's preprocessing; the batch keeps a copy no larger than
``images.DISPLAY_SIDE`` for figures. Every input is read and checked before any gradient is computed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .adapters.discovery import is_framework_tensor, tensor_to_array
from .errors import BadInputError
from .images import Photo, display_copy, example_image_path, load_image, photo_from_image
from .preprocess import Geometry, Preprocess

INPUT_KINDS = ("auto", "photo", "photo01", "model_input")


@dataclass(frozen=True)
class Batch:
    arrays: np.ndarray  # (N, H, W, C) float32, model input
    sources: tuple[str | None, ...]
    geometries: tuple[Geometry | None, ...]
    conversions: tuple[str | None, ...]
    photos: tuple  # bounded-size RGB copies of the photos for display, None for model-input arrays
    kinds: tuple[str, ...] = ()  # "photo" or "model_input", per input
    orientations: tuple[str | None, ...] = ()


def _torch_tensor(item) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(item, torch.Tensor)


def _photo_layout(shape: tuple[int, ...], name: str) -> str:
    """'CHW' or 'HWC' for a (batch of) image tensor(s); refuses a layout that fits both or neither."""
    first, last = shape[-3] == 3, shape[-1] == 3
    if first and last:
        raise BadInputError(f"{name} of shape {shape}", expected="a photo whose layout is clear",
                            got="a shape that reads as (3, H, W) and as (H, W, 3)",
                            fix="pass a photo at least 16 pixels on each side, or a numpy array (H, W, 3)")
    if not (first or last):
        raise BadInputError(f"{name} of shape {shape}", expected="a photo (3, H, W), (H, W, 3) or a batch of them",
                            got="no axis of size 3", fix="pass RGB photos")
    return "CHW" if first else "HWC"


def _photos_from_pixels(pixels: np.ndarray, layout: str, source: str, note: str | None) -> Iterator[Photo]:
    """uint8 pixels (H, W, 3) or (N, H, W, 3) (or CHW) as photos, made one at a time."""
    if layout == "CHW":
        pixels = np.moveaxis(pixels, -3, -1)
    for image in pixels[None] if pixels.ndim == 3 else pixels:
        photo = photo_from_image(Image.fromarray(np.ascontiguousarray(image)), source)
        yield Photo(photo.image, source, note, photo.orientation) if note else photo


def _declared_photo(values: np.ndarray, kind: str, name: str, shape) -> tuple[np.ndarray, str]:
    """Float pixels declared as a photo (0..255 or 0..1) as uint8, and a note of the conversion."""
    top = 1.0 if kind == "photo01" else 255.0
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > top:
        raise BadInputError(f"{name} of shape {shape}", expected=f"values in 0..{top:g} for input_kind={kind!r}",
                            got=f"values in {low:g}..{high:g}",
                            fix="pick the input_kind that matches the values ('photo': 0..255, 'photo01': 0..1, "
                                "'model_input': already preprocessed)")
    scaled = values.astype(np.float64) * (255.0 / top)
    pixels = np.rint(scaled)
    note = f"{values.dtype} values 0..{top:g}" + ("" if kind == "photo" else " scaled by 255")
    if not np.array_equal(pixels, scaled):
        note += ", rounded to 8 bits"
    return pixels.astype(np.uint8), note


def _refuse_ambiguous(arrays: np.ndarray, name: str, shape) -> None:
    """Refuse a float model-input array that could just as well be an RGB photo."""
    if arrays.shape[-1] != 3 or arrays.size == 0:
        return  # not 3 channels: it cannot be an RGB photo
    low, high = float(arrays.min()), float(arrays.max())
    if low < 0 or high > 255:
        return  # outside any photo range: normalised model input
    photo = ("a photo with values 0..1 (input_kind='photo01', as ToTensor gives) or 0..255 (input_kind='photo')"
             if high <= 1 else "a photo with values 0..255 (input_kind='photo', as np.asarray(image) gives)")
    raise BadInputError(
        f"{name} of shape {shape}", expected="an input whose meaning is clear",
        got=f"3 channels with values in {low:g}..{high:g}, which could be {photo}, to be resized, cropped and "
            "normalised by the model's preprocessing, or already preprocessed model input "
            "(input_kind='model_input'), to be taken as it is",
        fix="pass input_kind= to say which (or a uint8 array for a photo)")


def _read(item, kind: str) -> Iterable[Photo] | np.ndarray:
    """Photos, or a block of model input (N, H, W, C) float32, for one item the user passed."""
    if isinstance(item, (str, Path)):
        return [load_image(item)]
    if isinstance(item, Photo):
        return [item]
    if isinstance(item, Image.Image):
        return [photo_from_image(item, "<PIL image>")]
    if _torch_tensor(item):
        name, shape = "input tensor", tuple(item.shape)
        if kind != "model_input" and (item.dtype.is_floating_point is False or kind != "auto"):
            if item.ndim not in (3, 4):
                raise BadInputError(f"{name} of shape {shape}", expected="a photo (3, H, W), (H, W, 3) or a "
                                    "batch of them", got=f"{item.ndim} dimensions")
            layout = _photo_layout(shape, name)
            values = item.detach().cpu().numpy()
            note = None
            if values.dtype != np.uint8:
                if kind == "auto":
                    raise BadInputError(f"{name} of shape {shape}", expected="a uint8 or floating-point tensor",
                                        got=f"dtype {item.dtype}", fix="convert it, e.g. tensor.float()")
                values, note = _declared_photo(values, kind, name, shape)
            return _photos_from_pixels(values, layout, "<tensor>", note)
        arrays = tensor_to_array(item)
    elif is_framework_tensor(item):  # TensorFlow: channels last, the same rules as numpy arrays
        return _read(np.asarray(item), kind)
    elif isinstance(item, np.ndarray) and (item.dtype == np.uint8 or np.issubdtype(item.dtype, np.floating)):
        name, shape = f"{item.dtype} array", item.shape
        if kind != "model_input" and (item.dtype == np.uint8 or kind != "auto"):
            if item.ndim not in (3, 4) or item.shape[-1] != 3:
                raise BadInputError(f"{name} of shape {shape}", expected="a photo (height, width, 3) or a batch "
                                    "(N, height, width, 3)", got=f"shape {shape}",
                                    fix="pass RGB photos, or float32 model input with input_kind='model_input'")
            values, note = (item, None) if item.dtype == np.uint8 else _declared_photo(item, kind, name, shape)
            return _photos_from_pixels(values, "HWC", "<array>", note)
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
    if kind == "auto":
        _refuse_ambiguous(arrays, name, shape)
    return arrays


def prepare_inputs(images, preprocess: Preprocess, input_kind: str = "auto") -> Batch:
    """Load, check and preprocess ``images`` (one item or a list) into a Batch (see the module docstring)."""
    if input_kind not in INPUT_KINDS:
        raise BadInputError("input_kind", expected=f"one of {', '.join(repr(k) for k in INPUT_KINDS)}",
                            got=repr(input_kind))
    if images is None:
        images = [example_image_path()]
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise BadInputError("images", expected="at least one image", got="an empty list")
    arrays, sources, geometries, conversions, photos, kinds, orientations = [], [], [], [], [], [], []
    for item in images:
        read = _read(item, input_kind)
        if isinstance(read, np.ndarray):
            arrays.extend(read)
            for column in (sources, geometries, conversions, photos, orientations):
                column += [None] * len(read)
            kinds += ["model_input"] * len(read)
            continue
        for photo in read:  # one at a time: only the bounded display copy outlives this loop
            arrays.append(preprocess(photo))
            sources.append(photo.source)
            geometries.append(preprocess.geometry(photo.size))
            conversions.append(photo.converted_from)
            photos.append(display_copy(photo.image))
            kinds.append("photo")
            orientations.append(photo.orientation)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise BadInputError("inputs", expected="one model-input shape for the whole batch",
                            got=f"shapes {sorted(shapes)}", fix="use a preprocessing with a fixed crop")
    return Batch(np.stack(arrays).astype(np.float32, copy=False), tuple(sources), tuple(geometries),
                 tuple(conversions), tuple(photos), tuple(kinds), tuple(orientations))
