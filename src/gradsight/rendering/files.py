"""Writing outputs to disk: atomically (a temporary file, then a rename), and under names that never collide.

Example:
    >>> output_stems(["x/a.png", "y/a.png", "b.jpg"])
    ['x_a_png', 'y_a_png', 'b']

Names (``output_stems``) never collide, so no run overwrites its own outputs: a name is the file's stem
(``photos/a.png`` -> ``a``); inputs whose stems collide (ignoring case) get the extension (``a_png``,
``a_jpg``), then as many parent folders as it takes (``x_a_png``, ``y_a_png``); a name made this way is never
another input's plain stem. The same file given twice gets ``_2``; arrays and PIL images are ``input<i>``,
standard input is ``stdin``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import BadInputError


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _candidates(source: str | None, index: int) -> list[str]:
    """Names for one input, from plainest to most specific: stem, stem_ext, parent_stem_ext, ..."""
    if not source or source.startswith("<"):
        return ["stdin" if source == "<stdin>" else f"input{index}"]
    path = Path(os.path.abspath(source))
    names = [path.stem]
    tail = f"{path.stem}_{path.suffix[1:]}" if path.suffix else path.stem
    if path.suffix:
        names.append(tail)
    for parent in path.parents:
        if not parent.name:
            break
        tail = f"{parent.name}_{tail}"
        names.append(tail)
    return names


def _numbered(name: str, taken: set[str]) -> str:
    k = 2
    while f"{name}_{k}".casefold() in taken:
        k += 1
    return f"{name}_{k}"


def output_stems(sources: Sequence[str | None]) -> list[str]:
    """One file-name stem per input, all different ignoring case (the rule is in the module docstring)."""
    keys = [os.path.abspath(s) if s and not s.startswith("<") else (i,) for i, s in enumerate(sources)]
    first: dict = {}
    unique = [i for i, key in enumerate(keys) if first.setdefault(key, i) == i]
    candidates = {i: _candidates(sources[i], i) for i in unique}
    natural = {i: candidates[i][0].casefold() for i in unique}
    level = dict.fromkeys(unique, 0)
    while True:
        folded = {i: candidates[i][level[i]].casefold() for i in unique}
        moving = []
        for i in unique:
            others = [j for j in unique if j != i]
            if level[i] == 0:  # a plain stem moves on only when another plain stem is the same
                clash = any(level[j] == 0 and folded[j] == folded[i] for j in others)
            else:  # a made name must be unique and must not be anyone's plain stem
                clash = any(folded[i] in (folded[j], natural[j]) for j in others)
            if clash and level[i] + 1 < len(candidates[i]):
                moving.append(i)
        if not moving:
            break
        for i in moving:
            level[i] += 1
    names = {i: candidates[i][level[i]] for i in unique}
    taken = {name.casefold() for name in names.values()} | set(natural.values())
    used: set[str] = set()
    for i in unique:  # what the folders could not tell apart (e.g. A.png and a.png in one folder) gets a number
        name = names[i]
        if name.casefold() in used or (level[i] and any(natural[j] == name.casefold() for j in unique if j != i)):
            name = _numbered(name, taken | used)
        names[i] = name
        used.add(name.casefold())
    for i, key in enumerate(keys):
        if first[key] != i:  # the same file again
            names[i] = _numbered(names[first[key]], taken | used)
            used.add(names[i].casefold())
    return [names[i] for i in range(len(sources))]


def output_error(out: Path, err: OSError) -> BadInputError:
    return BadInputError(f"output folder {str(out)!r}", expected="a folder that can be created and written",
                         got=f"{type(err).__name__}: {err.strerror or err}", fix="choose another --out folder")


def make_output_folder(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and its parents) if needed; one clear error when that is impossible."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(out, err) from None
    return out
