"""Writing saliency results to disk: greyscale PNG, figure, raw NPY and a JSON sidecar, atomically.

Example:
    >>> import gradsight                                                   # doctest: +SKIP
    >>> paths = gradsight.save_saliency(gradsight.saliency("efficientnet_lite0"), "out/")  # doctest: +SKIP
    >>> sorted(p.name for p in paths)                                      # doctest: +SKIP
    ['ouzel.json', 'ouzel_figure.png', 'ouzel_saliency.npy', 'ouzel_saliency.png']

Per input: ``<name>_saliency.png`` (the map in model-input pixels, 8-bit, see ``plotting.to_uint8``),
``<name>_figure.png`` (photo | saliency | overlay), ``<name>_saliency.npy`` (raw float32 map, model-input
pixels) and ``<name>.json`` (source, model, target, score, preprocessing, version). Each file is rendered in
memory, then written to a temporary name and renamed, so a failure never leaves a half-written file.

Names (``output_stems``) never collide, so no run overwrites its own outputs: ``<name>`` is the file's stem
(``photos/a.png`` -> ``a``); inputs whose stems collide (ignoring case) get the extension (``a_png``,
``a_jpg``), then as many parent folders as it takes (``x_a_png``, ``y_a_png``); a name made this way is never
another input's plain stem. The same file given twice gets ``_2``; arrays and PIL images are ``input<i>``,
standard input is ``stdin``. The JSON records ``source`` and ``output_name``, so the mapping is explicit.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadInputError
from .saliency import DEFAULT_PERCENTILE, saliency_figure, to_uint8
from ..results import SaliencyResult


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


def sidecar(result: SaliencyResult, i: int, files: list[str], percentile: float, stem: str | None = None) -> dict:
    """The JSON record for input ``i``."""
    from .. import __version__

    predicted, target = int(result.predictions[i]), int(result.targets[i])
    geometry = result.geometries[i] if i < len(result.geometries) else None
    return {
        "gradsight_version": __version__,
        "method": "saliency (vanilla gradient): max over channels of |d score / d input|",
        "model": result.model_name,
        "source": result.sources[i] if i < len(result.sources) else None,
        "output_name": stem,
        "input_kind": result.input_kinds[i] if i < len(result.input_kinds) else None,
        "converted_from": result.conversions[i] if i < len(result.conversions) else None,
        "orientation": result.orientations[i] if i < len(result.orientations) else None,
        "score": result.score,
        "target": target,
        "target_label": result.label(target),
        "prediction": predicted,
        "prediction_label": result.label(predicted),
        "probability": float(result.prediction_probabilities[i]),
        "top5": [{"class": c, "label": name, "probability": p} for c, name, p in result.top_k(i, 5)],
        "preprocess": result.preprocess.as_dict() if result.preprocess else None,
        "geometry": asdict(geometry) if geometry else None,
        "fast_path": result.fast,
        "saliency_max": float(result.saliency[i].max()),
        "png_normalisation": f"round(clip(map / percentile(map, {percentile:g}), 0, 1) * 255)",
        "files": files,
    }


def render_saliency(result: SaliencyResult, i: int, stem: str,
                    percentile: float = DEFAULT_PERCENTILE) -> dict[str, bytes]:
    """All files of input ``i`` as {file name: bytes}, nothing written yet."""
    files: dict[str, bytes] = {}
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(result.saliency[i], percentile), mode="L").save(buffer, format="PNG")
    files[f"{stem}_saliency.png"] = buffer.getvalue()
    buffer = io.BytesIO()
    saliency_figure(result, i, percentile).savefig(buffer, format="png", dpi=100)
    files[f"{stem}_figure.png"] = buffer.getvalue()
    buffer = io.BytesIO()
    np.save(buffer, result.saliency[i].astype(np.float32))
    files[f"{stem}_saliency.npy"] = buffer.getvalue()
    record = sidecar(result, i, sorted([*files, f"{stem}.json"]), percentile, stem)
    files[f"{stem}.json"] = (json.dumps(record, indent=2) + "\n").encode()
    return files


def _output_error(out: Path, err: OSError) -> BadInputError:
    return BadInputError(f"output folder {str(out)!r}", expected="a folder that can be created and written",
                         got=f"{type(err).__name__}: {err.strerror or err}", fix="choose another --out folder")


def make_output_folder(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and its parents) if needed; one clear error when that is impossible."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _output_error(out, err) from None
    return out


def write_saliency(result: SaliencyResult, i: int, out_dir: str | Path, stem: str,
                   percentile: float = DEFAULT_PERCENTILE) -> list[Path]:
    """Render input ``i``'s files and write them into the existing folder ``out_dir``, each atomically."""
    out = Path(out_dir)
    written = []
    try:
        for name, data in render_saliency(result, i, stem, percentile).items():
            write_atomic(out / name, data)
            written.append(out / name)
    except OSError as err:
        raise _output_error(out, err) from None
    return written


def save_saliency(result: SaliencyResult, out_dir: str | Path,
                  percentile: float = DEFAULT_PERCENTILE) -> list[Path]:
    """Write every input's files into ``out_dir`` (created if needed), one input at a time; returns the paths.

    File names come from ``output_stems(result.sources)``: never two inputs on one name.
    """
    out = make_output_folder(out_dir)
    sources = [result.sources[i] if i < len(result.sources) else None for i in range(len(result))]
    written = []
    for i, stem in enumerate(output_stems(sources)):
        written += write_saliency(result, i, out, stem, percentile)
    return written
