"""Uploaded photos: raw bytes decoded in memory, capped in bytes and pixels, checked like files on disk.

Example:
    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO()
    >>> Image.new("RGB", (40, 30), "white").save(buffer, format="PNG")
    >>> decode_upload(buffer.getvalue(), "white.png").size
    (40, 30)
    >>> try:
    ...     decode_upload(b"not an image", "notes.txt")
    ... except ValueError as err:
    ...     print(str(err)[:59])
    upload 'notes.txt': expected an image file (PNG, JPEG, GIF,
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError
from ..images import Photo, photo_from_image

#: Host names the server answers to (anything else may be DNS rebinding: refused).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
MAX_UPLOAD_BYTES = 10 * 2 ** 20
MAX_UPLOAD_PIXELS = 16_000_000
# Only common photo formats: some Pillow plugins (EPS) would run external programs on untrusted bytes.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
FORMAT_NAMES = "PNG, JPEG, GIF, BMP, TIFF or WebP"


def clean_name(name: str | None) -> str:
    """A short printable label from what the browser says the file was called (never used as a path)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(ch for ch in base if ch.isprintable())[:60].strip()
    return printable or "upload"


def decode_upload(data: bytes, name: str) -> Photo:
    """An RGB Photo from uploaded bytes; one BadInputError for anything that is not a usable photo."""
    what = f"upload {clean_name(name)!r}"
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadInputError(what, expected=f"at most {MAX_UPLOAD_BYTES // 2 ** 20} MiB", got=f"{len(data):,} bytes",
                            fix="downscale or recompress the photo")
    if not data:
        raise BadInputError(what, expected=f"an image file ({FORMAT_NAMES})", got="an empty file", fix="upload a photo")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                width, height = img.size  # read from the header: refuse before decoding any pixel
                if width * height > MAX_UPLOAD_PIXELS:
                    raise BadInputError(what, expected=f"at most {MAX_UPLOAD_PIXELS:,} pixels",
                                        got=f"{width}x{height} = {width * height:,} pixels",
                                        fix="downscale the photo first")
                img.load()
                return photo_from_image(img, clean_name(name))
    except BadInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadInputError(what, expected=f"at most {MAX_UPLOAD_PIXELS:,} pixels",
                            got=f"an image so large it may be a decompression bomb ({err})",
                            fix="downscale it first") from None
    except UnidentifiedImageError:
        raise BadInputError(what, expected=f"an image file ({FORMAT_NAMES})",
                            got="data that is not an image in any of those formats", fix="upload a photo") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadInputError(what, expected="a complete image file", got=f"a damaged file ({err})",
                            fix="re-export or re-download the photo") from None


def describe_photo(photo: Photo) -> str:
    """'500x348' or '500x348, from L (greyscale repeated over R, G, B)'."""
    width, height = photo.size
    return f"{width}x{height}" + (f", from {photo.converted_from}" if photo.converted_from else "")
