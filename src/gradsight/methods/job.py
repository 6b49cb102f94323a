"""What a method receives: the model behind its adapter, one batch of model input, the targets and the score.

Example:
    >>> job = AttributionJob(adapter, net, inputs, (None, 3))      # doctest: +SKIP
    >>> job.resolved_targets()                                       # the predicted class for None  # doctest: +SKIP
    array([20, 3])

Methods never see photos or files: ``inputs`` is already model input (N, H, W, C), float32. What they need of
the photo's preprocessing (a black photo as a baseline) comes through ``preprocess``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..adapters.common import resolve_targets
from ..errors import BadInputError

SCORES = ("logit", "prob", "logprob")


CALL_IMAGES, CALL_BYTES = 128, 64 * 2 ** 20  # perturbed copies per predict call: about 128, at most 64 MiB


def images_per_call(image_nbytes: int, batch_size: int) -> int:
    """How many perturbed copies of one image go to one ``predict`` call: whole batches of ``batch_size``,
    about CALL_IMAGES of them and at most CALL_BYTES (at least one batch).

    Example:
        >>> images_per_call(224 * 224 * 3 * 4, 8)           # 600 KiB images: 13 batches fit in 64 MiB
        104

    Fewer, larger calls matter on small models: outside an ``unchanged_during`` block each call checks the
    cached fast copy (~3 ms on EfficientNet-Lite0, 16 ms on ResNet50) and watches its first pass for a
    functional softmax (+60% on that pass, EfficientNet-Lite0).
    """
    batches = max(1, min(CALL_BYTES // max(1, image_nbytes * batch_size), -(-CALL_IMAGES // batch_size)))
    return batch_size * batches


def even_chunks(count: int, most: int) -> list[slice]:
    """``count`` rows in as few passes of at most ``most`` as possible, of sizes differing by at most one.

    Example:
        >>> [s.stop - s.start for s in even_chunks(50, 16)]     # not 16, 16, 16, 2
        [12, 13, 12, 13]

    A short last pass costs more per row than a full one (ResNet50 forward + backward on 2 cores: 86 ms an
    image at batch 2, 63-70 ms from 6 to 32), so the rows are spread evenly.
    """
    passes = -(-count // most)
    if passes == 0:
        return []
    bounds = [count * k // passes for k in range(passes + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def positive_int(name: str, value) -> int:
    """``value`` as an int, refused unless it is a whole number >= 1 (NumPy integers too, booleans not)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise BadInputError(name, expected="a whole number >= 1", got=repr(value))
    return int(value)


def add_rows(total: np.ndarray, rows: np.ndarray, values: np.ndarray, weights: np.ndarray | None = None) -> None:
    """total[rows[k]] += weights[k] * values[k] for every k, summed in float64.

    One vectorised sum per distinct row: np.add.at does the same about 50 times slower (0.2 s for 32 maps
    of 224 x 224 x 3, a sixth of a SmoothGrad batch on the embedded model). The weighted sum is an einsum, not
    np.tensordot: numpy's BLAS threads keep spinning after a call, and on 2 cores the gradient pass that came
    next ran a quarter slower (EfficientNet-Lite0: 26 against 21 ms a path point of Integrated Gradients).
    """
    for i in np.unique(rows):
        pick = np.flatnonzero(rows == i)
        if weights is None:
            total[i] += values[pick].sum(axis=0, dtype=np.float64)
        else:
            total[i] += np.einsum("k,k...->...", np.asarray(weights, np.float64)[pick], values[pick])


def select_scores(logits: np.ndarray, targets: np.ndarray, score: str) -> np.ndarray:
    """score[target] of each row of ``logits`` (N, K), computed in float64 as the adapters do in float32."""
    z = logits.astype(np.float64)
    if score in ("prob", "logprob"):
        z = z - z.max(axis=1, keepdims=True)
        z = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # log-softmax
        if score == "prob":
            z = np.exp(z)
    elif score != "logit":
        raise BadInputError("score", expected=f"one of {', '.join(SCORES)}", got=repr(score))
    return z[np.arange(len(z)), np.asarray(targets, dtype=np.int64)]


def target_list(target, count: int) -> list[int | None]:
    """One target per input from what the user gave: None/"auto" (the predicted class), an index, or a list."""
    if target is None or (isinstance(target, str) and target == "auto"):
        return [None] * count
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return [int(target)] * count
    if isinstance(target, Sequence) and not isinstance(target, str) and len(target) == count:
        return [None if t in (None, "auto") else int(t) for t in target]
    raise BadInputError("target", expected=f"'auto', a class index, or a list of {count} of them",
                        got=repr(target))


@dataclass(frozen=True, eq=False)
class AttributionJob:
    """One batch for one method: ``inputs`` (N, H, W, C) model input, ``targets`` (None = predicted class)."""

    adapter: Any
    model: Any
    inputs: np.ndarray
    targets: tuple[int | None, ...]
    score: str = "logit"
    fast: bool = True
    preprocess: Any = None
    _cache: dict = field(default_factory=dict, repr=False)  # this batch's logits and targets
    shared: dict = field(default_factory=dict, repr=False)  # lives for one call: e.g. a modified copy

    def __len__(self) -> int:
        return len(self.inputs)

    def logits(self) -> np.ndarray:
        """The model's class scores on ``inputs`` (one forward pass, computed once)."""
        if "logits" not in self._cache:
            self._cache["logits"] = self.adapter.predict(self.model, self.inputs)
        return self._cache["logits"]

    def resolved_targets(self) -> np.ndarray:
        """Every target as a class index: None becomes the predicted class (needs one forward pass)."""
        if "targets" not in self._cache:
            logits = self.logits() if any(t is None for t in self.targets) else None
            classes = logits.shape[1] if logits is not None else None
            if classes is None:
                return np.asarray(self.targets, dtype=np.int64)
            self._cache["targets"] = np.asarray(resolve_targets(list(self.targets), classes, logits), np.int64)
        return self._cache["targets"]

    def scores(self) -> np.ndarray:
        """score[target] for every input, as the methods differentiate it."""
        return select_scores(self.logits(), self.resolved_targets(), self.score)

    def modified_model(self, rule: str) -> Any:
        """The model's copy under ``rule`` (guided, deconvnet, ...), made once per call and shared by batches."""
        key = ("modified", rule)
        if key not in self.shared:
            self.shared[key] = self.adapter.modified_copy(self.model, rule, probe=self.inputs[:1])
        return self.shared[key]

    def with_inputs(self, inputs: np.ndarray, targets) -> AttributionJob:
        """The same model and options on other inputs (noisy copies, interpolation steps, a chunk)."""
        return replace(self, inputs=inputs, targets=tuple(int(t) for t in targets), _cache={})
