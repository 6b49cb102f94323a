"""Preprocessing that belongs to a model's weights, and the way back from model input to the photo.

Example:
    >>> from gradsight.images import example_image_path, load_image
    >>> prep = Preprocess(resize=256, crop=224, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> x = prep(load_image(example_image_path()))
    >>> x.shape, x.dtype
    ((224, 224, 3), dtype('float32'))
    >>> prep.geometry((500, 348)).crop_box   # (left, top, right, bottom) in the resized 367x256 photo
    (72, 16, 296, 240)

The arithmetic follows torchvision's ``Resize(int)`` + ``CenterCrop`` + ``ToTensor`` + ``Normalize`` on PIL
images, which timm's eval transform also uses; tests check equality with both libraries' own transforms.
Images cross into models as float32 arrays in HWC layout (channels last).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .errors import BadInputError
from .images import Photo

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Geometry:
    """Where the model's input came from in the photo: photo size, resized size, crop box in the resized photo."""

    original_size: tuple[int, int]  # (width, height)
    resized_size: tuple[int, int]  # (width, height)
    crop_box: tuple[int, int, int, int]  # (left, top, right, bottom) in resized pixels

    def crop_box_on_original(self) -> tuple[float, float, float, float]:
        """The crop box in the photo's own pixel coordinates (edges, not centres)."""
        sx = self.original_size[0] / self.resized_size[0]
        sy = self.original_size[1] / self.resized_size[1]
        left, top, right, bottom = self.crop_box
        return (left * sx, top * sy, right * sx, bottom * sy)


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side to ``resize``, or to an exact (height, width)), centre-crop, then
    ``(pixels / pixel_max - mean) / std`` per channel, in ``channel_order``."""

    resize: int | tuple[int, int] | None
    crop: int | tuple[int, int] | None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    pixel_max: float = 255.0
    channel_order: str = "RGB"

    def __post_init__(self):
        if self.interpolation not in _RESAMPLE:
            raise BadInputError("interpolation", expected=f"one of {sorted(_RESAMPLE)}",
                                got=repr(self.interpolation))
        if self.channel_order not in ("RGB", "BGR"):
            raise BadInputError("channel_order", expected="'RGB' or 'BGR'", got=repr(self.channel_order))

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of the model input this produces, when it does not depend on the photo."""
        size = self.crop if self.crop is not None else self.resize
        if size is None or isinstance(size, int) and self.crop is None:
            return None
        return (size, size) if isinstance(size, int) else tuple(size)

    def geometry(self, original_size: tuple[int, int]) -> Geometry:
        """Resize and crop geometry for a photo of ``original_size`` = (width, height)."""
        width, height = original_size
        if self.resize is None:
            new_w, new_h = width, height
        elif isinstance(self.resize, int):
            # torchvision's rule: the shorter side becomes `resize`, the longer one is truncated, not rounded.
            if width <= height:
                new_w, new_h = self.resize, int(self.resize * height / width)
            else:
                new_w, new_h = int(self.resize * width / height), self.resize
        else:
            new_h, new_w = self.resize
        if self.crop is None:
            return Geometry((width, height), (new_w, new_h), (0, 0, new_w, new_h))
        crop_h, crop_w = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
        if crop_h > new_h or crop_w > new_w:
            raise BadInputError("preprocessing", expected=f"a resized photo at least {crop_w}x{crop_h}",
                                got=f"{new_w}x{new_h}", fix="make `resize` at least as large as `crop`")
        top = int(round((new_h - crop_h) / 2.0))
        left = int(round((new_w - crop_w) / 2.0))
        return Geometry((width, height), (new_w, new_h), (left, top, left + crop_w, top + crop_h))

    def __call__(self, photo: Photo | Image.Image) -> np.ndarray:
        """The model input for one photo: float32, (height, width, channels)."""
        image = photo.image if isinstance(photo, Photo) else photo
        geo = self.geometry(image.size)
        if geo.resized_size != image.size:
            image = image.resize(geo.resized_size, _RESAMPLE[self.interpolation])
        if geo.crop_box != (0, 0) + image.size:
            image = image.crop(geo.crop_box)
        pixels = np.asarray(image, dtype=np.float32)
        if self.pixel_max != 1.0:
            # Divide rather than multiply by the reciprocal: it is what ToTensor does, bit for bit.
            pixels = pixels / np.float32(self.pixel_max)
        if self.channel_order == "BGR":
            pixels = pixels[..., ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)

    def to_original(self, values: np.ndarray, original_size: tuple[int, int],
                    size: tuple[int, int] | None = None) -> np.ndarray:
        """Resample a (height, width) map from model-input pixels onto the photo; pixels never seen are 0.

        ``size`` (width, height): onto a scaled copy of the photo instead (a display copy), not its full size.
        """
        geo = self.geometry(original_size)
        left, top, right, bottom = geo.crop_box
        if values.shape != (bottom - top, right - left):
            raise BadInputError("map", expected=f"shape {(bottom - top, right - left)}",
                                got=f"shape {values.shape}")
        canvas = np.zeros(geo.resized_size[::-1], dtype=np.float32)
        canvas[top:bottom, left:right] = values
        back = Image.fromarray(canvas, mode="F").resize(size or geo.original_size, Image.Resampling.BILINEAR)
        return np.asarray(back, dtype=np.float32)

    def as_dict(self) -> dict:
        """A JSON-ready description (for result sidecars)."""
        return asdict(self)
