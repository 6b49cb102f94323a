"""Reading photos safely into 8-bit RGB, with one clear error for anything that is not a usable image.

Example:
    >>> from gradsight.images import example_image_path, load_image
    >>> photo = load_image(example_image_path())
    >>> photo.image.size, photo.image.mode, photo.converted_from, photo.orientation
    ((500, 348), 'RGB', None, None)

Photos are read upright: an EXIF Orientation tag (phones store pixels sideways) is applied and recorded in
``orientation``. Conversions that keep the picture's meaning are done and recorded in ``converted_from``:
greyscale (8 or 16 bit) is repeated over R, G, B; 16-bit values are scaled to 8 bits; 32-bit integer greyscale
is stretched from its own value range (it has no standard white); CMYK and palette images are converted;
transparency (RGBA, LA, palette with alpha) is composited on white; animated and multi-page files give their
first frame ("first of 12 frames"). Floating-point images and anything else raise BadInputError. Only regular
files are opened (a named pipe would block forever).
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadInputError

#: Shortest side, in pixels, below which a photo has too little content for a 224-pixel classifier.
MIN_SIDE = 16
#: Longest side of the copy of a photo that results and figures keep (memory stays bounded for huge photos).
DISPLAY_SIDE = 1024

_T = Image.Transpose
_ORIENTATIONS = {  # EXIF tag 0x0112 -> the transposition that stands the picture upright (as exif_transpose)
    2: (_T.FLIP_LEFT_RIGHT, "mirrored left-right"), 3: (_T.ROTATE_180, "rotated 180°"),
    4: (_T.FLIP_TOP_BOTTOM, "mirrored top-bottom"), 5: (_T.TRANSPOSE, "mirrored along the main diagonal"),
    6: (_T.ROTATE_270, "rotated 90° clockwise"), 7: (_T.TRANSVERSE, "mirrored along the anti-diagonal"),
    8: (_T.ROTATE_90, "rotated 90° counter-clockwise"),
}
_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def example_image_path() -> Path:
    """Path of the bundled example photo ``ouzel.png`` (ImageNet class 20, 'water ouzel, dipper')."""
    return Path(str(resources.files("gradsight") / "data" / "ouzel.png"))


@dataclass(frozen=True)
class Photo:
    """An RGB photo ready for preprocessing, with where it came from and what was done to read it."""

    image: Image.Image
    source: str
    converted_from: str | None = None
    orientation: str | None = None  # the EXIF orientation applied to stand it upright

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.size


def _refuse_non_regular(mode: int, what: str) -> None:
    if stat.S_ISDIR(mode):
        raise BadInputError(what, expected="an image file", got="a directory",
                            fix="pass the image files inside it, e.g. DIR/*.png")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")
        raise BadInputError(what, expected="a regular image file", got=kind,
                            fix="save the image to a file first (the command line reads a pipe given as '-')")


def _open_regular(path: Path, what: str) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file; never blocks on a FIFO."""
    try:
        _refuse_non_regular(os.stat(path).st_mode, what)
        # O_NONBLOCK: should the path become a FIFO after the stat, opening it still returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise BadInputError(what, expected="an existing image file", got="no such file",
                            fix="check the path") from None
    except PermissionError:
        raise BadInputError(what, expected="a readable image file", got="permission denied",
                            fix="check the file's permissions") from None
    except OSError as err:
        raise BadInputError(what, expected="a readable image file", got=f"{err.strerror or err}",
                            fix="check the path") from None
    try:
        _refuse_non_regular(os.fstat(fd).st_mode, what)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


@contextmanager
def _pillow_errors(what: str) -> Iterator[None]:
    """Turn what Pillow raises on unusable files into one BadInputError."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; a bomb is a bomb either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except BadInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadInputError(what, expected=f"at most {Image.MAX_IMAGE_PIXELS:,} pixels",
                            got=f"an image so large it may be a decompression bomb ({err})",
                            fix="downscale it first") from None
    except UnidentifiedImageError:
        raise BadInputError(what, expected="an image file (PNG, JPEG, ...)", got="a file Pillow cannot read",
                            fix="pass a photo") from None
    except (OSError, SyntaxError, EOFError, ValueError, struct.error) as err:  # Pillow's plugins use all of these
        raise BadInputError(what, expected="a complete image file", got=f"a damaged file ({err})",
                            fix="re-export or re-download the image") from None


def check_image_path(path: str | Path) -> Path:
    """Refuse, reading only the header, anything that is not a regular, readable image file Pillow knows."""
    path = Path(path)
    what = f"image {str(path)!r}"
    with _open_regular(path, what) as handle, _pillow_errors(what):
        Image.open(handle).close()
    return path


def load_image(path: str | Path) -> Photo:
    """Open ``path`` as an upright 8-bit RGB photo; raise BadInputError when it is not a usable image."""
    path = Path(path)
    what = f"image {str(path)!r}"
    with _open_regular(path, what) as handle, _pillow_errors(what):
        img = Image.open(handle)
        img.load()
        return photo_from_image(img, str(path), owned=True)


def load_image_bytes(data: bytes, source: str = "<bytes>") -> Photo:
    """The same as ``load_image`` for an image file's bytes (standard input, an upload), named ``source``."""
    what = f"image {source!r}"
    with _pillow_errors(what):
        img = Image.open(io.BytesIO(data))
        img.load()
        return photo_from_image(img, source, owned=True)


def display_copy(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """``image`` shrunk so its longest side is at most ``side`` pixels (the image itself when already small)."""
    width, height = image.size
    if max(width, height) <= side:
        return image
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def photo_from_image(img: Image.Image, source: str, owned: bool = False) -> Photo:
    """A Photo from an already opened PIL image (upright, converted to RGB, size checked).

    ``owned``: the image is gradsight's own, so it need not be copied (the user's images never change).
    """
    what = f"image {source!r}"
    notes = []
    frames = getattr(img, "n_frames", 1)
    if isinstance(frames, int) and frames > 1:
        frame = img.tell()
        notes.append(f"first of {frames} frames" if frame == 0 else f"frame {frame + 1} of {frames}")
        img.load()  # counting frames seeks through the file; read the current frame again while it is open
    tag = img.getexif().get(0x0112)
    rgb, converted_from = to_rgb(img, what, owned)
    orientation = None
    if tag in _ORIENTATIONS:
        method, done = _ORIENTATIONS[tag]
        rgb = rgb.transpose(method)
        orientation = f"EXIF Orientation {tag}: {done} to stand upright"
    width, height = rgb.size
    if min(width, height) < MIN_SIDE:
        raise BadInputError(what, expected=f"at least {MIN_SIDE}x{MIN_SIDE} pixels",
                            got=f"{width}x{height}", fix="use a larger photo")
    notes = [converted_from, *notes] if converted_from else notes
    return Photo(rgb, source, "; ".join(notes) or None, orientation)


def _declared_sixteen_bit(img: Image.Image) -> bool:
    """Whether a mode "I" image holds 16-bit samples (PGM/PPM with maxval > 255 open as "I", scaled to 65535)."""
    if img.format == "PPM":
        return True
    bits = getattr(img, "tag_v2", {}).get(258) if img.format == "TIFF" else None
    return bool(bits) and max(bits) <= 16


def to_rgb(img: Image.Image, what: str, owned: bool = False) -> tuple[Image.Image, str | None]:
    """``img`` as 8-bit RGB and a note of the conversion (None when it already was RGB)."""
    mode = img.mode
    if mode == "RGB":
        return (img if owned else img.copy()), None
    if mode.startswith("I;16") or (mode == "I" and _declared_sixteen_bit(img)):
        values = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(values / 65535.0 * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB"), f"{mode} (16-bit greyscale scaled to 8 bits)"
    if mode == "I":
        # 32-bit integers have no standard white: stretch the values' own range, and say so.
        values = np.asarray(img, dtype=np.float64)
        low, high = int(values.min(initial=0)), int(values.max(initial=0))
        span = max(high - low, 1)
        grey = np.clip(np.rint((values - low) / span * 255.0), 0, 255).astype(np.uint8)
        return (Image.fromarray(grey).convert("RGB"),
                f"I (32-bit greyscale: values {low}..{high} stretched to 0..255)")
    if mode == "F":
        raise BadInputError(what, expected="an 8-, 16- or 32-bit integer image",
                            got="a 32-bit floating-point image (Pillow mode 'F'), whose brightness scale is unknown",
                            fix="convert it to 8- or 16-bit, or pass its values as an array with input_kind "
                                "'photo' (0..255) or 'photo01' (0..1)")
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
