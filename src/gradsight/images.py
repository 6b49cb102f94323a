"""Reading photos safely into 8-bit RGB, with one clear error for anything that is not a usable image.

Example:
    >>> from gradsight.images import example_image_path, load_image
    >>> photo = load_image(example_image_path())
    >>> photo.image.size, photo.image.mode, photo.converted_from
    ((500, 348), 'RGB', None)

Conversions that keep the picture's meaning are done and recorded in ``converted_from``: greyscale (8 or
16 bit) is repeated over R, G, B; 16-bit values are scaled to 8 bits; CMYK and palette images are converted;
transparency (RGBA, LA, palette with alpha) is composited on white. Everything else raises BadInputError.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadInputError

#: Shortest side, in pixels, below which a photo has too little content for a 224-pixel classifier.
MIN_SIDE = 16


def example_image_path() -> Path:
    """Path of the bundled example photo ``ouzel.png`` (ImageNet class 20, 'water ouzel, dipper')."""
    return Path(str(resources.files("gradsight") / "data" / "ouzel.png"))


@dataclass(frozen=True)
class Photo:
    """An RGB photo ready for preprocessing, with where it came from."""

    image: Image.Image
    source: str
    converted_from: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.size


def load_image(path: str | Path) -> Photo:
    """Open ``path`` as an 8-bit RGB photo; raise BadInputError when it is not a usable image."""
    path = Path(path)
    what = f"image {str(path)!r}"
    if not path.exists():
        raise BadInputError(what, expected="an existing image file", got="no such file",
                            fix="check the path")
    if path.is_dir():
        raise BadInputError(what, expected="an image file", got="a directory",
                            fix="pass the image files inside it, e.g. DIR/*.png")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; a bomb is a bomb either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return photo_from_image(img, str(path))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadInputError(what, expected=f"at most {Image.MAX_IMAGE_PIXELS:,} pixels",
                            got=f"an image so large it may be a decompression bomb ({err})",
                            fix="downscale it first") from None
    except UnidentifiedImageError:
        raise BadInputError(what, expected="an image file (PNG, JPEG, ...)", got="a file Pillow cannot read",
                            fix="pass a photo") from None
    except OSError as err:
        raise BadInputError(what, expected="a complete image file", got=f"a damaged file ({err})",
                            fix="re-export or re-download the image") from None


def photo_from_image(img: Image.Image, source: str) -> Photo:
    """A Photo from an already opened PIL image (converted to RGB, size checked)."""
    what = f"image {source!r}"
    rgb, converted_from = to_rgb(img, what)
    width, height = rgb.size
    if min(width, height) < MIN_SIDE:
        raise BadInputError(what, expected=f"at least {MIN_SIDE}x{MIN_SIDE} pixels",
                            got=f"{width}x{height}", fix="use a larger photo")
    return Photo(rgb, source, converted_from)


def to_rgb(img: Image.Image, what: str) -> tuple[Image.Image, str | None]:
    mode = img.mode
    if mode == "RGB":
        return img.copy(), None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB"), f"{mode} (16-bit greyscale scaled to 8 bits)"
    if mode in ("L", "1"):
        return img.convert("RGB"), f"{mode} (greyscale repeated over R, G, B)"
    if mode == "CMYK":
        return img.convert("RGB"), "CMYK"
    if mode == "YCbCr":
        return img.convert("RGB"), "YCbCr"
    if mode in ("RGBA", "LA", "PA", "P", "RGBa", "La"):
        rgba = img.convert("RGBA")
        if mode == "P" and "transparency" not in img.info:
            return img.convert("RGB"), "P (palette)"
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), f"{mode} (transparency composited on white)"
    raise BadInputError(what, expected="an 8-bit or 16-bit RGB, greyscale, CMYK or palette image",
                        got=f"Pillow mode {mode!r}", fix="convert it to 8-bit RGB (e.g. PNG or JPEG)")
