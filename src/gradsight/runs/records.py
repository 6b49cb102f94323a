"""What a run writes per image and method: the map file(s), atomically, then one manifest line.

Example:
    >>> encode_map(np.array([[0.5, 0.25]], np.float32), float32=False)[0].dtype
    dtype('float16')
    >>> encode_map(np.array([[3e-7, 1e-7]], np.float32), float32=False)[1]   # float16 would round these
    'float16 would change the map by more than 2**-10 of its maximum 3e-07; stored as float32'

Layout: ``OUT/<relative path>.<method>.npy`` (and ``.png`` with ``png=True``) next to ``OUT/manifest.jsonl``.
The .npy holds the raw map in float16 (float32 on request, or when float16 would change it by more than
2**-10 of its maximum: tiny gradients, say of saturated probabilities, fall into float16's subnormal range).
The PNG is ``round(clip(map / p99, 0, 1) * 255)`` like ``gradsight saliency``'s; a signed map (Integrated
Gradients, Input x Gradient) is blue-white-red, symmetric at the 99th percentile of |map|, as
``gradsight attribute``'s files.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..rendering.files import write_atomic
from .manifest import Manifest, State, run_key

FLOAT16_TOLERANCE = 2.0 ** -10
_PNG = "round(clip(map / percentile(map, 99), 0, 1) * 255)"
_SIGNED_PNG = "RGB, blue-white-red (RdBu_r): clip(map / percentile(|map|, 99), -1, 1), white at 0"


@dataclass
class Outcome:
    """One image and method, computed or failed, ready to be written."""

    rel: str
    method: str
    sha256: str | None
    size: int | None
    map: np.ndarray | None = None
    logits: np.ndarray | None = None
    error: str | None = None
    converted_from: str | None = None
    orientation: str | None = None  # the EXIF orientation applied to read the photo upright
    timing: dict = field(default_factory=dict)
    target: int | None = None  # the class explained
    effective: dict = field(default_factory=dict)  # what the method resolved for this image (a CAM layer, a sigma)
    per_image: dict = field(default_factory=dict)  # the method's diagnostics (Integrated Gradients' gap)


@dataclass(frozen=True)
class RunSettings:
    """What every line of a run shares: model identity, effective options per method, output choices."""

    out: Path
    model: str
    model_weights: str
    model_sha256: str
    class_names: tuple[str, ...] | None
    options: dict  # {method: effective options as recorded, preprocessing included}
    stores: dict = field(default_factory=dict)  # {method: what its .npy holds}
    float32: bool = False
    png: bool = False
    engine: dict = field(default_factory=dict)

    def key(self, rel: str, sha256: str | None, method: str) -> str:
        return run_key(rel, sha256, self.model_sha256, method, self.options[method])

    def outputs(self) -> dict:
        return {"dtype": "float32" if self.float32 else "float16", "png": self.png}


def output_paths(out: Path, rel: str, method: str) -> tuple[Path, Path]:
    """(.npy, .png) of an image's map: the input's relative path plus the method."""
    base = out / f"{rel}.{method}"
    return base.with_name(base.name + ".npy"), base.with_name(base.name + ".png")


def encode_map(values: np.ndarray, float32: bool) -> tuple[np.ndarray, str | None]:
    """(the array to store, a note when float16 was asked for but float32 is stored)."""
    values = np.asarray(values, dtype=np.float32)
    if float32:
        return values, None
    with np.errstate(over="ignore"):  # too large for float16 becomes inf, caught below
        half = values.astype(np.float16)
    top = float(np.abs(values).max(initial=0.0))
    error = float(np.abs(half.astype(np.float32) - values).max(initial=0.0))
    if np.isfinite(half).all() and error <= FLOAT16_TOLERANCE * top:
        return half, None
    return values, (f"float16 would change the map by more than 2**-10 of its maximum {top:.3g}; "
                    "stored as float32")


def is_done(state: State | None, key: str, settings: RunSettings) -> bool:
    """True when ``state`` (from the latest line for an image and method) is ok, has ``key`` and the outputs
    asked for are on disk, whole."""
    if state is None or state.status != "ok" or state.key != key or state.dtype != settings.outputs()["dtype"]:
        return False
    files = [(state.map_file, state.map_bytes)] + ([(state.png_file, state.png_bytes)] if settings.png else [])
    for name, size in files:
        if not name:
            return False
        try:
            if (settings.out / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _probabilities(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits)
    exp = np.exp(shifted)
    return exp / exp.sum()


class Writer:
    """Writes outcomes (thread-safe: files are per image, manifest appends are serialised)."""

    def __init__(self, settings: RunSettings, manifest: Manifest):
        self.settings = settings
        self.manifest = manifest
        from .. import __version__

        self.version = __version__

    def _label(self, index: int) -> str | None:
        names = self.settings.class_names
        return names[index] if names is not None and 0 <= index < len(names) else None

    def _base(self, o: Outcome) -> dict:
        s = self.settings
        return {"path": o.rel, "method": o.method, "sha256": o.sha256, "bytes": o.size,
                "model": s.model, "model_weights": s.model_weights, "model_sha256": s.model_sha256,
                "options": s.options[o.method], "outputs": s.outputs(), "key": s.key(o.rel, o.sha256, o.method),
                "gradsight_version": self.version, "engine": s.engine,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds")}

    def write(self, o: Outcome) -> dict:
        """Write one outcome; returns its manifest line."""
        try:
            return self._write_error(o) if o.error is not None else self._write_ok(o)
        except OSError as err:
            raise BadInputError(f"output folder {str(self.settings.out)!r}", expected="a folder that can be written",
                                got=f"{type(err).__name__}: {err.strerror or err}",
                                fix="free disk space or choose another --out; the run resumes from the manifest"
                                ) from None

    def _write_error(self, o: Outcome) -> dict:
        record = self._base(o) | {"status": "error", "error": o.error, "converted_from": o.converted_from,
                                  "orientation": o.orientation, "timing": o.timing}
        self.manifest.append(record)
        for path in output_paths(self.settings.out, o.rel, o.method):
            path.unlink(missing_ok=True)  # the line above already says these no longer hold
        return record

    def _write_ok(self, o: Outcome) -> dict:
        started = time.perf_counter()
        s = self.settings
        npy, png = output_paths(s.out, o.rel, o.method)
        if not np.isfinite(o.map).all():
            return self._write_error(Outcome(o.rel, o.method, o.sha256, o.size, error="the map has NaN or "
                                             "infinite values", converted_from=o.converted_from,
                                             orientation=o.orientation, timing=o.timing))
        stored, note = encode_map(o.map, s.float32)
        buffer = io.BytesIO()
        np.save(buffer, stored)
        files = {npy: buffer.getvalue()}
        signed = False
        if s.png:
            from PIL import Image

            from ..rendering.attribution import is_signed, to_rgb
            from ..rendering.saliency import to_uint8

            buffer = io.BytesIO()
            signed = is_signed(o.map)  # Integrated Gradients, Input x Gradient: negative values are shown
            picture = Image.fromarray(to_rgb(o.map)) if signed else Image.fromarray(to_uint8(o.map), mode="L")
            picture.save(buffer, format="PNG")
            files[png] = buffer.getvalue()
        npy.parent.mkdir(parents=True, exist_ok=True)
        if npy.exists() or png.exists():
            self.manifest.append(self._base(o) | {"status": "stale", "error": None,
                                                  "reason": "outputs about to be replaced"})
        for path, data in files.items():
            write_atomic(path, data)
        probs = _probabilities(o.logits)
        top = np.argsort(-probs, kind="stable")[:5]
        predicted = int(top[0])
        target = predicted if o.target is None else int(o.target)
        timing = dict(o.timing, write_s=round(time.perf_counter() - started, 6))
        record = self._base(o) | {
            "status": "ok", "error": None,
            "map": {"file": npy.relative_to(s.out).as_posix(), "bytes": len(files[npy]), "dtype": str(stored.dtype),
                    "shape": list(stored.shape), "max": float(o.map.max(initial=0.0)),
                    "min": float(o.map.min(initial=0.0)),
                    "stores": s.stores.get(o.method), "note": note},
            "png": ({"file": png.relative_to(s.out).as_posix(), "bytes": len(files[png]),
                     "normalisation": _SIGNED_PNG if signed else _PNG} if s.png else None),
            "target": target, "target_label": self._label(target), "effective": o.effective,
            "per_image": o.per_image,
            "prediction": {"class": predicted, "label": self._label(predicted), "probability": float(probs[predicted])},
            "top5": [{"class": int(c), "label": self._label(int(c)), "probability": float(probs[c])} for c in top],
            "converted_from": o.converted_from, "orientation": o.orientation, "timing": timing,
        }
        self.manifest.append(record)
        return record
