"""The gradsight exception family: one base class, each also a built-in type users already catch.

Example:
    >>> try:
    ...     raise BadInputError("image", expected="an RGB image", got="a 1x1 image", fix="use a larger photo")
    ... except ValueError as err:
    ...     print(err)
    image: expected an RGB image, got a 1x1 image. Use a larger photo.

Every message says what was expected, what was got and what to do; the CLI prints it without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GradsightError(Exception):
    """Base class of every error gradsight raises on purpose."""


def _sentence(what: str, expected: str, got: str, fix: str) -> str:
    fix = fix[:1].upper() + fix[1:] if fix else ""
    got = got.rstrip()
    text = f"{what}: expected {expected}, got {got}" + ("" if got.endswith(".") else ".")
    if not fix:
        return text
    return f"{text} {fix}" if fix.endswith(("?", ".", "!")) else f"{text} {fix}."



def cause_of(err: BaseException, limit: int = 300) -> str:
    """Another library's exception in one line for a ``got=``: its first paragraph (which may wrap over several
    lines), cut at the last full sentence within ``limit`` characters."""
    text = " ".join(line.strip() for line in str(err).strip().split("\n\n")[0].splitlines())
    text = text or type(err).__name__
    return text if len(text) <= limit else text[:limit].rsplit(". ", 1)[0]


class BadInputError(GradsightError, ValueError):
    """A value the user gave (image, array, index, option) is not usable."""

    def __init__(self, what: str, *, expected: str, got: str, fix: str = ""):
        super().__init__(_sentence(what, expected, got, fix))
        self.what, self.expected, self.got, self.fix = what, expected, got, fix


class UnknownNameError(GradsightError, KeyError):
    """A model or layer name that does not exist; the message suggests close names."""

    def __init__(self, kind: str, name: str, known: Iterable[str], fix: str = ""):
        known = sorted(set(known))
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        if close:
            hint = f"did you mean {', '.join(repr(c) for c in close)}?"
        else:
            sample = ", ".join(repr(k) for k in known[:8]) + (", ..." if len(known) > 8 else "")
            hint = f"known names include {sample}" + (f"; {fix}" if fix else "")
        message = _sentence(f"unknown {kind} {name!r}", f"one of {len(known)} known {kind} names", repr(name), hint)
        super().__init__(message)
        self.name, self.suggestions = name, close

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class WeightsUnavailableError(GradsightError, FileNotFoundError):
    """Pretrained weights are neither on local disk nor allowed/able to be downloaded."""


class UnsupportedGeometryError(GradsightError, NotImplementedError):
    """A model runs an operation or layer whose effect on the pixel grid gradsight does not know."""


class MissingDependencyError(GradsightError, ImportError):
    """An optional framework extra is not installed."""
