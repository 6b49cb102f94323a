"""The one place a dataset run computes maps: ``compute_batch``, the methods it knows and their options.

Example:
    >>> import numpy as np, torch
    >>> from gradsight.methods.saliency import as_loaded_model
    >>> loaded = as_loaded_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> opts = method_options(["gradient"], {})["gradient"]
    >>> [m.shape for m, _ in compute_batch(loaded, np.ones((2, 2, 2, 3), np.float32), "gradient", opts)]
    [(2, 2), (2, 2)]

Both engines (local threads, Ray actors) call ``compute_batch`` on preprocessed float32 NHWC arrays, so a new
method only has to be added here. ``model_fingerprint`` identifies the weights a map was computed with (it is
part of the resume key: other weights under the same name recompute).
"""

from __future__ import annotations

import difflib
import hashlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..adapters.discovery import adapter_for
from ..errors import BadInputError


def _score(value: Any) -> str:
    if value in ("logit", "prob", "logprob"):
        return value
    raise BadInputError("option score", expected="'logit', 'prob' or 'logprob'", got=repr(value))


def _target(value: Any) -> str | int:
    if value in (None, "auto"):
        return "auto"
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or number < 0 or str(value).strip() != str(number):
        raise BadInputError("option target", expected="'auto' (the predicted class) or a class index >= 0",
                            got=repr(value))
    return number


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise BadInputError("option fast", expected="true or false", got=repr(value))


@dataclass(frozen=True)
class Method:
    """A map a run can compute: what its .npy holds, and its options with their parsers and defaults."""

    name: str
    stores: str
    parsers: Mapping[str, Callable[[Any], Any]]
    defaults: Mapping[str, Any] = field(default_factory=dict)


METHODS = {
    "gradient": Method(
        "gradient",
        "vanilla gradient saliency (Simonyan et al. 2013): max over colour channels of |d score / d input|, "
        "shape (rows, cols) of the model input, raw values",
        {"score": _score, "target": _target, "fast": _flag},
        {"score": "logit", "target": "auto", "fast": True}),
}


def parse_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    """``"gradient"`` or ``"a,b"`` or a list -> known method names, in order, without repeats."""
    names = methods.split(",") if isinstance(methods, str) else list(methods)
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        raise BadInputError("--method", expected="at least one method name", got="none",
                            fix=f"e.g. --method {next(iter(METHODS))}")
    for name in names:
        if name not in METHODS:
            close = difflib.get_close_matches(name, METHODS, n=3)
            hint = f"did you mean {', '.join(map(repr, close))}?" if close else ""
            raise BadInputError(f"method {name!r}", expected=f"one of {', '.join(sorted(METHODS))}",
                                got=repr(name), fix=hint)
    return tuple(dict.fromkeys(names))


def parse_option_pairs(pairs: Sequence[str] | None) -> dict[str, str]:
    """``["score=prob", "target=20"]`` -> ``{"score": "prob", "target": "20"}``."""
    options: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInputError("--option", expected="KEY=VALUE, e.g. score=prob", got=repr(pair))
        if key.strip() in options and options[key.strip()] != value.strip():
            raise BadInputError(f"--option {key.strip()}", expected="one value",
                                got=f"both {options[key.strip()]!r} and {value.strip()!r}")
        options[key.strip()] = value.strip()
    return options


def method_options(methods: Sequence[str], raw: Mapping[str, Any] | None,
                   num_classes: int | None = None) -> dict[str, dict[str, Any]]:
    """The effective options of each method: its defaults, overridden by the ``raw`` options it knows.

    A key no chosen method knows is refused; so is a target class the model does not have.
    """
    raw = dict(raw or {})
    known = {key for name in methods for key in METHODS[name].parsers}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            raise BadInputError(f"option {key!r}", expected=f"one of {', '.join(sorted(known))} for "
                                f"{', '.join(methods)}", got=repr(key),
                                fix=f"did you mean {', '.join(map(repr, close))}?" if close else "")
    effective = {}
    for name in methods:
        method = METHODS[name]
        values = dict(method.defaults)
        values.update({k: method.parsers[k](v) for k, v in raw.items() if k in method.parsers})
        target = values.get("target")
        if isinstance(target, int) and num_classes is not None and target >= num_classes:
            raise BadInputError("option target", expected=f"a class index in 0..{num_classes - 1}",
                                got=str(target), fix="pass a class the model has, or 'auto'")
        effective[name] = values
    return effective


def compute_batch(loaded, arrays: np.ndarray, method: str, options: Mapping[str, Any]
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image of ``arrays`` (N, H, W, C float32, preprocessed): (raw map float32 (H, W), logits (K,))."""
    if method != "gradient":
        raise BadInputError(f"method {method!r}", expected=f"one of {', '.join(sorted(METHODS))}", got=method)
    target = options.get("target", "auto")
    targets = [None if target == "auto" else int(target)] * len(arrays)
    out = adapter_for(loaded.module).score_gradient(loaded.module, arrays, targets, options.get("score", "logit"),
                                                    options.get("fast", True))
    maps = np.abs(out.gradient).max(axis=-1).astype(np.float32, copy=False)
    return [(maps[i], np.asarray(out.logits[i], dtype=np.float32)) for i in range(len(arrays))]


def chosen_target(options: Mapping[str, Any], logits: np.ndarray) -> int:
    """The class whose score was differentiated: the option's index, or the predicted class for 'auto'."""
    target = options.get("target", "auto")
    return int(np.argmax(logits)) if target == "auto" else int(target)


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
