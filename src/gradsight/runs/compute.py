"""The one place a dataset run computes maps: ``compute_batch`` runs any registered method on a batch.

Example:
    >>> import numpy as np, torch
    >>> from gradsight.models.registry import as_loaded_model
    >>> loaded = as_loaded_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> opts = run_options(["gradient"], {})["gradient"]
    >>> opts
    {'score': 'logit', 'target': 'auto', 'fast': True}
    >>> [c.map.shape for c in compute_batch(loaded, np.ones((2, 2, 2, 3), np.float32), "gradient", opts)]
    [(2, 2), (2, 2)]

Methods and their options come from the method registry (``methods/registry.py``): every registered method
runs in a dataset run with its own options (the registry's defaults, the user's values checked by
``registry.method_options``), plus the run options every method takes: ``score`` ("logit", "prob",
"logprob"), ``target`` ("auto" or a class index, the same for every image) and ``fast`` (the BatchNorm-folded
gradient pass). Both engines (local threads, Ray actors) call ``compute_batch`` on preprocessed float32 NHWC
arrays; it builds one ``AttributionJob`` and calls the method, as ``gradsight.attribute`` does. What is stored
is the method's displayed map ``MethodMaps.maps`` (rows, cols) (``stores`` says what that is per method). A
``GradsightError`` from a method (an option value, a layer name, the model) is a mistake in the command, not
in an image: ``check_methods`` finds it up front on one blank input, and ``compute_batch`` lets it through so
the run stops. ``model_fingerprint`` identifies the weights a map was computed with (part of the resume key).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..adapters.discovery import adapter_for
from ..commands.options import parse_options, per_method, split_names
from ..errors import BadInputError, GradsightError
from ..methods.job import SCORES, AttributionJob
from ..methods.registry import get_method, method_options

#: What every method of a run takes besides its own options, with the defaults.
RUN_OPTIONS = {"score": "logit", "target": "auto", "fast": True}

_DISPLAYS = {
    "max_abs": "max over colour channels of |attribution|",
    "sum": "signed sum over colour channels of the attribution",
    "cam": "the map as the method computes it",
}
_KINDS = {
    "pixel": "a per-pixel attribution",
    "cam": "a class activation map at a layer (the manifest's effective.layer), bilinearly upsampled to the "
           "model input",
    "perturbation": "score changes under perturbations of the input",
}


@dataclass(frozen=True)
class Computed:
    """One image's result: the displayed map, logits, explained class, resolved options and diagnostics."""

    map: np.ndarray  # (rows, cols) float32
    logits: np.ndarray  # (classes,) float32
    target: int
    effective: dict = field(default_factory=dict)  # what the method resolved for this image (JSON-ready)
    per_image: dict = field(default_factory=dict)  # e.g. {"completeness_gap": 1e-4} (floats)


def parse_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    """``"gradient"`` or ``"a,b"`` or a list -> registered method names, in order, without repeats; unknown
    names are refused with close names suggested."""
    names = split_names(methods) if isinstance(methods, str) else split_names(",".join(methods))
    for name in names:
        get_method(name)
    return tuple(dict.fromkeys(names))


def _score(value: Any) -> str:
    if isinstance(value, str) and value in SCORES:
        return value
    raise BadInputError("option score", expected=f"one of {', '.join(map(repr, SCORES))}", got=repr(value))


def _target(value: Any) -> str | int:
    if value is None or (isinstance(value, str) and value == "auto"):
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():  # '20' from an older manifest or a script
        value = int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise BadInputError("option target", expected="'auto' (the predicted class) or a class index >= 0",
                        got=repr(value))


def _flag(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise BadInputError("option fast", expected="true or false", got=repr(value))


_RUN_PARSERS = {"score": _score, "target": _target, "fast": _flag}


def run_options(methods: Sequence[str], raw: Mapping[str, Any] | Sequence[str] | None,
                num_classes: int | None = None) -> dict[str, dict[str, Any]]:
    """Every effective option of each method: the run options, then the method's own (registry defaults
    updated with what it was given). ``raw``: ``{"n_steps": 8, "smoothgrad.seed": 1}`` or CLI pairs
    ``["n_steps=8"]``; a key goes to every method that takes it, ``METHOD.KEY`` to one. Unknown keys,
    bad run-option values and a target class the model does not have are refused."""
    raw = parse_options(list(raw)) if isinstance(raw, (list, tuple)) else dict(raw or {})
    given = per_method(raw, list(methods), common=tuple(RUN_OPTIONS))
    effective = {}
    for name in methods:
        run = {k: _RUN_PARSERS[k](given[name].get(k, default)) for k, default in RUN_OPTIONS.items()}
        own = method_options(get_method(name), {k: v for k, v in given[name].items() if k not in RUN_OPTIONS})
        for key, value in own.items():
            jsonable(value, f"option {key!r} of method {name!r}")  # refused now, not when recorded
        if isinstance(run["target"], int) and num_classes is not None and run["target"] >= num_classes:
            raise BadInputError("option target", expected=f"a class index in 0..{num_classes - 1}",
                                got=str(run["target"]), fix="pass a class the model has, or 'auto'")
        effective[name] = {**run, **own}
    return effective


def split_run_options(options: Mapping[str, Any]) -> tuple[dict, dict]:
    """(score/target/fast, the method's own options) of one method's effective options."""
    run = {k: options.get(k, default) for k, default in RUN_OPTIONS.items()}
    return run, {k: v for k, v in options.items() if k not in RUN_OPTIONS and k != "preprocess"}


def jsonable(value: Any, what: str = "option"):
    """``value`` as it is recorded and hashed: arrays by shape, dtype and the sha256 of their bytes."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"array": list(data.shape), "dtype": str(data.dtype), "sha256": hashlib.sha256(data.tobytes()
                                                                                               ).hexdigest()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, what) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, what) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise BadInputError(what, expected="a number, text, list, dict or NumPy array (recorded in the manifest)",
                        got=type(value).__name__)


def recorded_options(options: Mapping[str, Any]) -> dict:
    """A method's effective options as the manifest records them (and the resume key hashes them)."""
    return jsonable(dict(options))


def stores(method: str, options: Mapping[str, Any]) -> str:
    """What the .npy of ``method`` holds, from the registry's kind and display (and, for a wrapper such as
    SmoothGrad's mean, the display of the method it wraps)."""
    info = get_method(method)
    display = info.display
    wrapped = options.get("base_method")
    if isinstance(wrapped, str) and options.get("variant", "mean") == "mean":
        display = get_method(wrapped).display
    return (f"{info.name}: {info.summary.rstrip('.')} ({info.reference}). The displayed map, shape (rows, cols) "
            f"of the model input, raw values: {_KINDS[info.kind]}, {_DISPLAYS[display]}")


def _image_values(values: Mapping[str, Any], i: int, count: int) -> dict:
    """This image's share of what a method resolved: lists of one value per input are split (as
    ``gradsight.attribute`` joins them), everything else is common to the batch."""
    return {k: jsonable(v[i] if isinstance(v, list) and len(v) == count else v) for k, v in values.items()}


def compute_batch(loaded, arrays: np.ndarray, method: str, options: Mapping[str, Any]) -> list[Computed]:
    """Per image of ``arrays`` (N, H, W, C float32, preprocessed): the method's result (see ``Computed``).

    ``options``: the method's effective options (``run_options``). A method's ``GradsightError`` is raised."""
    info = get_method(method)
    run, own = split_run_options(options)
    target = None if run["target"] == "auto" else int(run["target"])
    job = AttributionJob(adapter_for(loaded.module), loaded.module, arrays, (target,) * len(arrays), run["score"],
                         run["fast"], loaded.preprocess)
    out = info.fn(job, **own)
    logits = np.asarray(out.logits if out.logits is not None else job.logits(), dtype=np.float32)
    targets = np.asarray(out.targets if out.targets is not None else job.resolved_targets())
    maps = np.asarray(out.maps).astype(np.float32, copy=False)
    count = len(arrays)
    return [Computed(maps[i], logits[i], int(targets[i]), _image_values(out.effective, i, count),
                     {k: float(np.asarray(v)[i]) for k, v in out.per_image.items()}) for i in range(count)]


def check_methods(loaded, methods: Sequence[str], per_method_options: Mapping[str, Mapping[str, Any]]
                  ) -> int | None:
    """Run every method once on one blank input of the model's size, so that a bad option value (n_steps=0, a
    CAM layer not found, a method for another framework) stops the command before any image is read; returns
    the model's number of classes (None when the preprocessing has no fixed size: then nothing is checked)."""
    adapter = adapter_for(loaded.module)
    for name in methods:
        get_method(name).require_framework(adapter.name)
    size = loaded.preprocess.input_size if loaded.preprocess is not None else None
    if size is None:
        return len(loaded.class_names) if loaded.class_names is not None else None
    blank = np.zeros((1, *size, len(loaded.preprocess.mean)), dtype=np.float32)
    classes = None
    for name in methods:
        probe = dict(per_method_options[name], target="auto")  # the target's range is checked from the logits
        try:
            classes = len(compute_batch(loaded, blank, name, probe)[0].logits)
        except GradsightError:
            raise
        except Exception:  # not a mistake in the command: the run records it image by image
            continue
    if loaded.class_names is not None:
        return len(loaded.class_names)
    return classes


def model_fingerprint(module: Any) -> str:
    """sha256 over the model's class, tensor names, dtypes, shapes and values (torch or Keras)."""
    digest = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(module, torch.nn.Module):
        for name, tensor in module.state_dict().items():
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
    for variable in getattr(module, "weights", None) or ():
        value = np.asarray(variable)
        digest.update(f"{getattr(variable, 'path', getattr(variable, 'name', ''))}:{value.dtype}:"
                      f"{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def describe_fatal(err: GradsightError) -> str:
    """A method's refusal as text that crosses process boundaries (Ray rows) and comes back whole."""
    if isinstance(err, BadInputError):
        return json.dumps({"what": err.what, "expected": err.expected, "got": err.got, "fix": err.fix})
    return json.dumps({"message": str(err)})


def fatal_error(text: str) -> GradsightError:
    """The error ``describe_fatal`` described: a BadInputError again, or a GradsightError with its message."""
    parts = json.loads(text)
    if "message" in parts:
        return GradsightError(parts["message"])
    return BadInputError(parts["what"], expected=parts["expected"], got=parts["got"], fix=parts["fix"])
