"""Finding the images of a run: folders (optionally recursive), globs and single files, each with the relative
path its outputs mirror.

Example:
    >>> from gradsight.images import example_image_path
    >>> [s.rel for s in find_images([example_image_path().parent])]
    ['ouzel.png']

A folder gives the image files inside it (subfolders with ``recursive``), named relative to the folder; a glob
(``data/*/*.jpg``; ``**`` with ``recursive``) gives the files it matches, named relative to the glob's fixed
leading folder; a file named on its own is taken whatever its extension, under its own name. Hidden files and
folders (a leading dot) are left out, and so is the output folder when it lies inside an input folder.
Symbolic links to files are followed (the output keeps the link's name); links to folders are followed once
(a loop is not). Two different files that would land on the same output path are refused, naming both.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError

#: Extensions (lower case) of the files a folder or glob contributes.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm", ".pnm"})
_MAGIC = set("*?[")


@dataclass(frozen=True)
class Source:
    """One input image: where it is (absolute, possibly a link) and its relative path (POSIX, mirrored in OUT)."""

    path: Path
    rel: str


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def find_images(inputs, recursive: bool = False, exclude: Path | None = None) -> list[Source]:
    """Every image named by ``inputs`` (folders, globs, files), sorted by relative path, duplicates merged."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise BadInputError("inputs", expected="at least one folder, glob or image file", got="none",
                            fix="name a folder, e.g. `gradsight attribute photos/ --recursive`")
    excluded = Path(exclude).resolve() if exclude is not None else None
    found: dict[str, Source] = {}
    for item in inputs:
        sources = _expand(str(item), recursive, excluded)
        if not sources:
            raise BadInputError(f"input {str(item)!r}", expected="at least one image file ("
                                + ", ".join(sorted(IMAGE_EXTENSIONS)[:6]) + ", ...)", got="none",
                                fix=_empty_fix(str(item), recursive))
        for source in sources:
            _add(found, source)
    return [found[rel] for rel in sorted(found)]


def _add(found: dict[str, Source], source: Source) -> None:
    other = found.get(source.rel)
    if other is None:
        found[source.rel] = source
    elif os.path.abspath(other.path) != os.path.abspath(source.path):
        raise BadInputError(f"output path {source.rel!r}", expected="one input file per output path",
                            got=f"both {str(other.path)!r} and {str(source.path)!r}",
                            fix="give each folder its own --out, or pass their common parent with --recursive")


def _expand(item: str, recursive: bool, excluded: Path | None) -> list[Source]:
    path = Path(item)
    if path.is_dir():
        if excluded is not None and path.resolve() == excluded:
            raise BadInputError(f"input folder {item!r}", expected="a folder other than the output folder",
                                got="the output folder itself", fix="choose another --out")
        return list(_walk(path.absolute(), recursive, excluded))
    if os.path.lexists(path) and not _MAGIC & set(item):
        return [Source(path.absolute(), path.name)]
    if _MAGIC & set(item):
        return _glob(item, recursive, excluded)
    raise BadInputError(f"input {item!r}", expected="an existing folder, image file or glob pattern",
                        got="no such file or folder", fix="check the path")


def _walk(root: Path, recursive: bool, excluded: Path | None):
    seen = {root.resolve()}
    for folder, dirs, files in os.walk(root, followlinks=True):
        here = Path(folder)
        keep = []
        for name in sorted(dirs):
            real = (here / name).resolve()
            if recursive and not name.startswith(".") and real != excluded and real not in seen:
                seen.add(real)
                keep.append(name)
        dirs[:] = keep
        for name in sorted(files):
            if not name.startswith(".") and is_image_name(name):
                yield Source(here / name, (here / name).relative_to(root).as_posix())


def _glob(pattern: str, recursive: bool, excluded: Path | None) -> list[Source]:
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if _MAGIC & set(part))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    base = base.absolute()
    sources = []
    for match in sorted(glob.glob(pattern, recursive=recursive)):
        path = Path(match).absolute()
        rel = path.relative_to(base)
        if path.is_dir() or not is_image_name(path.name) or any(p.startswith(".") for p in rel.parts):
            continue  # a folder named like an image is still a folder
        if excluded is not None and excluded in path.resolve().parents:
            continue
        sources.append(Source(path, rel.as_posix()))
    return sources


def _empty_fix(item: str, recursive: bool) -> str:
    path = Path(item)
    if path.is_dir() and not recursive and any(p.is_dir() for p in path.iterdir()):
        return "it has subfolders: pass --recursive to search them"
    if "**" in item and not recursive:
        return "'**' matches subfolders only with --recursive"
    return "check the path and the file extensions"
