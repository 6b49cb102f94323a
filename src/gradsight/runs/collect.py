"""Gathering a run's results for analysis: the maps into one chunked Zarr store, or the manifest into Parquet.

Example:
    >>> collect("maps/", "maps.zarr")            # doctest: +SKIP
    >>> import zarr                              # doctest: +SKIP
    >>> zarr.open_group("maps.zarr", mode="r")["gradient/maps"].shape   # doctest: +SKIP
    (50000, 224, 224)

Zarr (``pip install 'gradsight[collect]'``): per method a group with ``maps`` (N, rows, cols), ``paths``,
``sha256``, ``target``, ``prediction``, ``probability`` and the method's diagnostics ``per_image_<name>``
(e.g. ``per_image_completeness_gap``) (N,), one row per image whose latest manifest line
is ``ok``, sorted by path; the group's attributes hold the model, its weights' sha256, the options and what
the maps are. Maps are read one at a time (memory stays flat). Images computed with different models or
options are refused, naming both, rather than stacked together. Parquet: every manifest line, flattened,
with ``current`` marking the latest line per image and method. Both are written under a temporary name and
renamed into place; an existing target is not overwritten.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import BadInputError, MissingDependencyError
from ..rendering.files import write_atomic
from .manifest import MANIFEST_NAME, read_lines

_CHUNK_IMAGES = 16


def collect(out, to) -> Path:
    """Write ``to`` (``*.zarr`` or ``*.parquet``) from the run folder ``out``; returns ``to``."""
    out, to = Path(out), Path(to)
    kind = to.suffix.lower()
    if kind not in (".zarr", ".parquet"):
        raise BadInputError(f"--to {str(to)!r}", expected="a name ending in .zarr (maps) or .parquet (manifest)",
                            got=repr(to.suffix or to.name), fix="e.g. --to maps.zarr")
    if os.path.lexists(to):
        raise BadInputError(f"--to {str(to)!r}", expected="a new name", got="an existing file or folder",
                            fix="delete it first or choose another name")
    if not to.parent.is_dir():
        raise BadInputError(f"--to {str(to)!r}", expected="a path in an existing folder", got="a missing folder",
                            fix="create the folder first")
    records, _ = read_lines(out / MANIFEST_NAME)
    if not records:
        raise BadInputError(f"run folder {str(out)!r}", expected=f"a {MANIFEST_NAME} with at least one line",
                            got="none" if not (out / MANIFEST_NAME).exists() else "no readable line",
                            fix="pass the --out folder of a `gradsight attribute` run")
    if kind == ".parquet":
        _parquet(records, to)
    else:
        _zarr(out, records, to)
    return to


def _latest(records: list[dict]) -> dict:
    return {(r["path"], r["method"]): r for r in records}


def _parquet(records: list[dict], to: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise MissingDependencyError("Parquet needs pyarrow: pip install 'gradsight[collect]'") from err
    current = {id(r) for r in _latest(records).values()}
    rows = []
    for r in records:
        prediction, mapping = r.get("prediction") or {}, r.get("map") or {}
        rows.append({
            "path": r["path"], "method": r["method"], "status": r.get("status"), "error": r.get("error"),
            "current": id(r) in current, "sha256": r.get("sha256"), "bytes": r.get("bytes"),
            "model": r.get("model"), "model_sha256": r.get("model_sha256"), "key": r.get("key"),
            "options": json.dumps(r.get("options"), sort_keys=True), "map_file": mapping.get("file"),
            "map_dtype": mapping.get("dtype"), "map_max": mapping.get("max"), "target": r.get("target"),
            "prediction": prediction.get("class"), "prediction_label": prediction.get("label"),
            "probability": prediction.get("probability"),
            "top5_classes": [t["class"] for t in r.get("top5") or []],
            "top5_probabilities": [t["probability"] for t in r.get("top5") or []],
            "effective": json.dumps(r.get("effective")), "per_image": json.dumps(r.get("per_image")),
            "timing": json.dumps(r.get("timing")), "gradsight_version": r.get("gradsight_version"),
            "time": r.get("time"),
        })
    schema = pa.schema([("path", pa.string()), ("method", pa.string()), ("status", pa.string()),
                        ("error", pa.string()), ("current", pa.bool_()), ("sha256", pa.string()),
                        ("bytes", pa.int64()), ("model", pa.string()), ("model_sha256", pa.string()),
                        ("key", pa.string()), ("options", pa.string()), ("map_file", pa.string()),
                        ("map_dtype", pa.string()), ("map_max", pa.float64()), ("target", pa.int64()),
                        ("prediction", pa.int64()), ("prediction_label", pa.string()),
                        ("probability", pa.float64()), ("top5_classes", pa.list_(pa.int64())),
                        ("top5_probabilities", pa.list_(pa.float64())), ("effective", pa.string()),
                        ("per_image", pa.string()), ("timing", pa.string()),
                        ("gradsight_version", pa.string()), ("time", pa.string())])
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    write_atomic(to, buffer.getvalue())


def _zarr(out: Path, records: list[dict], to: Path) -> None:
    try:
        import zarr
    except ImportError as err:
        raise MissingDependencyError("Zarr stores need zarr: pip install 'gradsight[collect]'") from err
    by_method: dict[str, list[dict]] = {}
    for (_, method), r in sorted(_latest(records).items()):
        if r.get("status") == "ok":
            by_method.setdefault(method, []).append(r)
    if not by_method:
        raise BadInputError(f"run folder {str(out)!r}", expected="at least one map whose latest line is ok",
                            got="none", fix="run `gradsight attribute` first, or look at the errors in the manifest")
    for method, rows in by_method.items():
        _check_uniform(method, rows)
    temp = Path(tempfile.mkdtemp(dir=to.parent, prefix=f".{to.name}.", suffix=".tmp"))
    try:
        root = zarr.open_group(str(temp), mode="w")
        for method, rows in by_method.items():
            _write_method(zarr, root, out, method, rows)
        os.rename(temp, to)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _check_uniform(method: str, rows: list[dict]) -> None:
    """One model, one set of options and one map shape per method; otherwise name the two readings."""
    first = rows[0]
    for r in rows[1:]:
        for what, value in (("model", lambda x: (x.get("model"), x.get("model_sha256"))),
                            ("options", lambda x: x.get("options")), ("map shape", lambda x: x["map"]["shape"])):
            if value(r) != value(first):
                raise BadInputError(f"maps of method {method!r}", expected=f"one {what} for every image",
                                    got=f"{value(first)} for {first['path']!r} but {value(r)} for {r['path']!r}",
                                    fix="recompute the run with one model and one set of options, or use "
                                        "--to manifest.parquet to see every line")


def _write_method(zarr, root, out: Path, method: str, rows: list[dict]) -> None:
    count, shape = len(rows), tuple(rows[0]["map"]["shape"])
    dtype = "float16" if all(r["map"]["dtype"] == "float16" for r in rows) else "float32"
    group = root.create_group(method)
    maps = group.create_array("maps", shape=(count, *shape), chunks=(min(count, _CHUNK_IMAGES), *shape), dtype=dtype)
    for start in range(0, count, _CHUNK_IMAGES):
        chunk = rows[start:start + _CHUNK_IMAGES]
        maps[start:start + len(chunk)] = np.stack([_load_map(out, r) for r in chunk]).astype(dtype)
    columns = {
        "paths": (str, [r["path"] for r in rows]),
        "sha256": (str, [r["sha256"] for r in rows]),
        "target": ("int64", [r["target"] for r in rows]),
        "prediction": ("int64", [r["prediction"]["class"] for r in rows]),
        "probability": ("float64", [r["prediction"]["probability"] for r in rows]),
    }
    for key in rows[0].get("per_image") or {}:  # a method's diagnostics, e.g. Integrated Gradients' gap
        columns[f"per_image_{key}"] = ("float64", [(r.get("per_image") or {}).get(key, np.nan) for r in rows])
    for name, (kind, values) in columns.items():
        array = group.create_array(name, shape=(count,), dtype=kind)
        array[:] = np.asarray(values, dtype=object if kind is str else kind)
    first = rows[0]
    group.attrs.update({"model": first["model"], "model_sha256": first["model_sha256"],
                        "model_weights": first.get("model_weights"), "options": first["options"],
                        "stores": first["map"].get("stores"), "source": str(out.resolve() / MANIFEST_NAME)})


def _load_map(out: Path, record: dict) -> np.ndarray:
    path = out / record["map"]["file"]
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BadInputError(f"map file {str(path)!r}", expected="the .npy its manifest line names",
                            got=f"{type(err).__name__}: {err}", fix="run `gradsight attribute` again to recompute it"
                            ) from None
    if list(values.shape) != record["map"]["shape"]:
        raise BadInputError(f"map file {str(path)!r}", expected=f"shape {record['map']['shape']}",
                            got=f"shape {list(values.shape)}", fix="run `gradsight attribute` again to recompute it")
    return values
