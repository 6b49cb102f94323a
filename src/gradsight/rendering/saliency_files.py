"""Saliency results on disk: greyscale PNG, figure, raw NPY and a JSON sidecar per input, each atomically.

Example:
    >>> import gradsight                                                   # doctest: +SKIP
    >>> paths = gradsight.save_saliency(gradsight.saliency("efficientnet_lite0"), "out/")  # doctest: +SKIP
    >>> sorted(p.name for p in paths)                                      # doctest: +SKIP
    ['ouzel.json', 'ouzel_figure.png', 'ouzel_saliency.npy', 'ouzel_saliency.png']

Per input: ``<name>_saliency.png`` (the map in model-input pixels, 8-bit, see ``saliency.to_uint8``),
``<name>_figure.png`` (photo | saliency | overlay), ``<name>_saliency.npy`` (raw float32 map, model-input
pixels) and ``<name>.json`` (source, model, target, score, preprocessing, version). Names come from
``files.output_stems``; the JSON records ``source`` and ``output_name``, so the mapping is explicit.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..results import SaliencyResult
from .files import make_output_folder, output_error, output_stems, write_atomic
from .saliency import DEFAULT_PERCENTILE, saliency_figure, to_uint8


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
        raise output_error(out, err) from None
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
