"""Writing saliency results to disk: greyscale PNG, figure, raw NPY and a JSON sidecar, atomically.

Example:
    >>> import gradsight                                                   # doctest: +SKIP
    >>> paths = gradsight.save_saliency(gradsight.saliency("efficientnet_lite0"), "out/")  # doctest: +SKIP
    >>> sorted(p.name for p in paths)                                      # doctest: +SKIP
    ['ouzel.json', 'ouzel_figure.png', 'ouzel_saliency.npy', 'ouzel_saliency.png']

Per input: ``<stem>_saliency.png`` (the map in model-input pixels, 8-bit, see ``plotting.to_uint8``),
``<stem>_figure.png`` (photo | saliency | overlay), ``<stem>_saliency.npy`` (raw float32 map, model-input
pixels) and ``<stem>.json`` (model, target, score, preprocessing, version). Every file is rendered in memory,
then written to a temporary name and renamed, so a failure never leaves a half-written file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import BadInputError
from .plotting import DEFAULT_PERCENTILE, saliency_figure, to_uint8
from .results import SaliencyResult


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


def _stems(result: SaliencyResult) -> list[str]:
    stems, seen = [], {}
    for i in range(len(result)):
        source = result.sources[i] if i < len(result.sources) else None
        stem = Path(source).stem if source and not source.startswith("<") else f"input{i}"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def sidecar(result: SaliencyResult, i: int, files: list[str], percentile: float) -> dict:
    """The JSON record for input ``i``."""
    from . import __version__

    predicted, target = int(result.predictions[i]), int(result.targets[i])
    geometry = result.geometries[i] if i < len(result.geometries) else None
    return {
        "gradsight_version": __version__,
        "method": "saliency (vanilla gradient): max over channels of |d score / d input|",
        "model": result.model_name,
        "source": result.sources[i] if i < len(result.sources) else None,
        "converted_from": result.conversions[i] if i < len(result.conversions) else None,
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
    record = sidecar(result, i, sorted([*files, f"{stem}.json"]), percentile)
    files[f"{stem}.json"] = (json.dumps(record, indent=2) + "\n").encode()
    return files


def save_saliency(result: SaliencyResult, out_dir: str | Path,
                  percentile: float = DEFAULT_PERCENTILE) -> list[Path]:
    """Write every input's files into ``out_dir`` (created if needed); returns the paths written."""
    out = Path(out_dir)
    rendered = {}
    for i, stem in enumerate(_stems(result)):
        rendered.update(render_saliency(result, i, stem, percentile))
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in rendered.items():
            write_atomic(out / name, data)
            written.append(out / name)
    except OSError as err:
        raise BadInputError(f"output folder {str(out)!r}", expected="a folder that can be created and written",
                            got=f"{type(err).__name__}: {err.strerror or err}",
                            fix="choose another --out folder") from None
    return written
