"""Pictures and files of any attribution method: a PNG per map, its raw NPY, a JSON sidecar, a comparison figure.

Example:
    >>> import gradsight                                                               # doctest: +SKIP
    >>> runs = [gradsight.attribute("efficientnet_lite0", method=m) for m in ("gradient", "grad_cam")]
    >>> attribution_figure(runs, 0).savefig("methods.png")                            # doctest: +SKIP

Colour conventions, the same in every panel and file: maps that are never negative (|gradient|, CAM,
SmoothGrad^2) are shown from 0 (black) to their 99th percentile (white, or bright in the overlay); signed maps
(Input x Gradient, Integrated Gradients, occlusion) on a diverging scale, blue < 0 < red, symmetric at the 99th
percentile of |map|, so that white is exactly zero.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from ..results import AttributionResult
from .files import output_error, output_stems, write_atomic

DEFAULT_PERCENTILE = 99.0


def is_signed(values: np.ndarray) -> bool:
    """True when a map has negative values worth showing (beyond float rounding)."""
    top = float(np.abs(values).max(initial=0.0))
    return top > 0 and float(values.min(initial=0.0)) < -1e-6 * top


def scale(values: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> tuple[np.ndarray, bool]:
    """Values scaled for display: [0, 1] for non-negative maps, [-1, 1] for signed ones; and which it was."""
    signed = is_signed(values)
    magnitude = np.abs(values)
    top = float(np.percentile(magnitude, percentile))
    if top <= 0:
        top = float(magnitude.max(initial=0.0))
    if top <= 0:
        return np.zeros_like(values, dtype=np.float32), signed
    low = -1.0 if signed else 0.0
    return np.clip(values / top, low, 1.0).astype(np.float32), signed


def to_rgb(values: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """(H, W, 3) uint8: greyscale for non-negative maps, blue-white-red for signed ones."""
    scaled, signed = scale(values, percentile)
    if signed:
        rgba = colormaps["RdBu_r"]((scaled + 1.0) / 2.0)
        return np.rint(rgba[..., :3] * 255).astype(np.uint8)
    grey = np.rint(scaled * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def describe(result: AttributionResult) -> str:
    """One line saying what the map is, e.g. 'integrated_gradients of logit[20], n_steps=50, ...'."""
    shown = ", ".join(f"{k}={v}" for k, v in result.options.items()
                      if not isinstance(v, (list, dict)) and v is not None)
    return f"{result.method} of {result.score}" + (f" ({shown})" if shown else "")


def _panel(ax, result: AttributionResult, i: int, percentile: float) -> None:
    photo = result.photos[i] if i < len(result.photos) else None
    values = result.on_original(i, photo.size) if photo is not None else result.maps[i]
    scaled, signed = scale(values, percentile)
    if signed:
        if photo is not None:
            ax.imshow(photo.convert("L"), cmap="gray", alpha=0.35)
        ax.imshow(scaled, cmap="RdBu_r", vmin=-1, vmax=1, alpha=np.clip(np.abs(scaled) * 1.5, 0, 1))
    else:
        if photo is not None:
            ax.imshow(photo, alpha=0.6)
        ax.imshow(scaled, cmap="inferno", vmin=0, vmax=1, alpha=scaled)
    ax.set_title(f"{result.method}" + (" (signed: blue < 0 < red)" if signed else ""), fontsize=10)
    ax.set_axis_off()


def attribution_figure(results: list[AttributionResult], i: int = 0,
                       percentile: float = DEFAULT_PERCENTILE) -> Figure:
    """The photo, then one panel per method's map of input ``i`` (all results of the same inputs)."""
    first = results[0]
    photo = first.photos[i] if i < len(first.photos) else None
    columns = len(results) + 1
    fig = Figure(figsize=(3.2 * columns, 3.8), layout="constrained")
    axes = fig.subplots(1, columns)
    if photo is not None:
        axes[0].imshow(photo)
    else:
        axes[0].text(0.5, 0.5, "model input given as an array", ha="center", va="center")
    axes[0].set_title("photo")
    axes[0].set_axis_off()
    for ax, result in zip(axes[1:], results):
        _panel(ax, result, i, percentile)
    predicted, target = int(first.predictions[i]), int(first.targets[i])
    title = f"predicted: {first.label(predicted)} ({predicted}), p = {float(first.prediction_probabilities[i]):.3f}"
    if target != predicted:
        title += f"   |   explained: {first.label(target)} ({target})"
    fig.suptitle(f"{title}\nmodel {first.model_name}; display clipped at the {percentile:g}th percentile",
                 fontsize=10)
    return fig


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def sidecar(result: AttributionResult, i: int, files: list[str], percentile: float) -> dict:
    """The JSON record of input ``i``: what was computed (method, every option), on what, and the prediction."""
    from .. import __version__

    predicted, target = int(result.predictions[i]), int(result.targets[i])
    geometry = result.geometries[i] if i < len(result.geometries) else None
    return {
        "gradsight_version": __version__,
        "method": result.method,
        # An option with one value per input (SmoothGrad's sigma): this input's own.
        "options": _jsonable({k: result.per_image[k][i] if k in result.per_image else v
                              for k, v in result.options.items()}),
        "description": describe(result),
        "framework": result.framework,
        "model": result.model_name,
        "source": result.sources[i] if i < len(result.sources) else None,
        "converted_from": result.conversions[i] if i < len(result.conversions) else None,
        "input_kind": result.input_kinds[i] if i < len(result.input_kinds) else None,
        "orientation": result.orientations[i] if i < len(result.orientations) else None,
        "score": result.score,
        "target": target,
        "target_label": result.label(target),
        "prediction": predicted,
        "prediction_label": result.label(predicted),
        "probability": float(result.prediction_probabilities[i]),
        "top5": [{"class": c, "label": name, "probability": p} for c, name, p in result.top_k(i, 5)],
        "per_image": {k: _jsonable(v[i]) for k, v in result.per_image.items()},
        "preprocess": result.preprocess.as_dict() if result.preprocess else None,
        "geometry": asdict(geometry) if geometry else None,
        "fast_path": result.fast,
        "map_min": float(result.maps[i].min()),
        "map_max": float(result.maps[i].max()),
        "png": ("blue-white-red, symmetric at percentile(|map|, {p:g})" if is_signed(result.maps[i])
                else "grey: round(clip(map / percentile(|map|, {p:g}), 0, 1) * 255)").format(p=percentile),
        "files": files,
    }


def render_attribution(result: AttributionResult, i: int, stem: str,
                       percentile: float = DEFAULT_PERCENTILE) -> dict[str, bytes]:
    """Files of input ``i`` for one method, as {name: bytes}: PNG, raw map NPY, layer map NPY (CAM), JSON."""
    base = f"{stem}_{result.method}"
    files: dict[str, bytes] = {}
    buffer = io.BytesIO()
    Image.fromarray(to_rgb(result.maps[i], percentile)).save(buffer, format="PNG")
    files[f"{base}.png"] = buffer.getvalue()
    buffer = io.BytesIO()
    np.save(buffer, result.maps[i].astype(np.float32))
    files[f"{base}.npy"] = buffer.getvalue()
    if result.layer_maps is not None:
        buffer = io.BytesIO()
        np.save(buffer, result.layer_maps[i].astype(np.float32))
        files[f"{base}_layer.npy"] = buffer.getvalue()
    record = sidecar(result, i, sorted([*files, f"{base}.json"]), percentile)
    files[f"{base}.json"] = (json.dumps(record, indent=2) + "\n").encode()
    return files


def render_comparison(results: list[AttributionResult], i: int, stem: str,
                      percentile: float = DEFAULT_PERCENTILE) -> dict[str, bytes]:
    """The comparison figure of input ``i`` as {f'{stem}_methods.png': bytes}."""
    buffer = io.BytesIO()
    attribution_figure(results, i, percentile).savefig(buffer, format="png", dpi=100)
    return {f"{stem}_methods.png": buffer.getvalue()}


def save_attributions(results: list[AttributionResult], out_dir, percentile: float = DEFAULT_PERCENTILE,
                      stems: list[str] | None = None) -> list:
    """Write every input's files for every method (and, with several methods, a comparison figure) into
    ``out_dir``; each file is rendered in memory, then written atomically. Returns the paths written."""
    out = Path(out_dir)
    first = results[0]
    stems = stems or output_stems(first.sources or [None] * len(first))
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for i, stem in enumerate(stems):
            files = {}
            for result in results:
                files.update(render_attribution(result, i, stem, percentile))
            if len(results) > 1:
                files.update(render_comparison(results, i, stem, percentile))
            for name, data in files.items():
                write_atomic(out / name, data)
                written.append(out / name)
    except OSError as err:
        raise output_error(out, err) from None
    return written
