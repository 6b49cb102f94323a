"""Deletion and insertion curves (Petsiuk et al. 2018, RISE): is the map's ranking of pixels faithful?

Example:
    >>> import gradsight                                                                            # doctest: +SKIP
    >>> f = gradsight.faithfulness("efficientnet_lite0", method="gradient", metric="deletion")
    >>> f.auc[0], f.random_auc[0]          # lower than the random order is better for deletion  # doctest: +SKIP

Pixels (all channels of a pixel together) are taken in the order of the map, largest first. Deletion starts
from the image and fills them with a baseline (zeros in model-input space by default); insertion starts from a
blurred copy (Gaussian of sigma 5 px, cut at radius 5: RISE's 11 x 11 kernel) and puts them back. After each of
``steps`` equal steps the score is the target class probability (``score="logit"`` for the logit). Curves have
``steps + 1`` points over the fraction of pixels 0..1; the area under them (trapezoid over that fraction) lies
in [0, 1] for probabilities. A random order (seeded) is computed alongside as the floor to beat. The default
``steps=224`` takes 225 forward passes per curve (450 with the random curve) on a 224 x 224 image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..adapters import adapter_for
from ..errors import BadInputError
from ..inputs import prepare_inputs
from ..methods.attribute import attribute
from ..methods.job import select_scores
from ..methods.saliency import as_loaded_model

METRICS = ("deletion", "insertion")
RISE_SIGMA, RISE_RADIUS = 5.0, 5  # RISE's insertion blur: an 11 x 11 Gaussian kernel of sigma 5


@dataclass(frozen=True, eq=False)
class FaithfulnessResult:
    """Curves (N, steps + 1) of one metric for one method's maps, and their normalised areas (N,)."""

    metric: str
    method: str
    fractions: np.ndarray
    curves: np.ndarray
    auc: np.ndarray
    random_curves: np.ndarray
    random_auc: np.ndarray
    targets: np.ndarray
    score: str
    model_name: str
    options: dict[str, Any] = field(default_factory=dict)

    def better_than_random(self) -> np.ndarray:
        """Per image: deletion below the random curve's area, insertion above it."""
        return self.auc < self.random_auc if self.metric == "deletion" else self.auc > self.random_auc

    def as_dict(self) -> dict:
        return {"metric": self.metric, "method": self.method, "model": self.model_name, "score": self.score,
                "targets": self.targets.tolist(), "options": self.options,
                "auc_rule": "trapezoid over the fraction of pixels in [0, 1]", "auc": self.auc.tolist(),
                "random_auc": self.random_auc.tolist(), "fractions": self.fractions.tolist(),
                "curves": self.curves.tolist(), "random_curves": self.random_curves.tolist()}


def area(fractions: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Trapezoid area under ``curve`` (..., K) over ``fractions`` (K,) from 0 to 1."""
    widths = np.diff(fractions)
    return ((curve[..., 1:] + curve[..., :-1]) / 2 * widths).sum(axis=-1)


def step_sizes(pixels: int, steps: int) -> np.ndarray:
    """How many pixels have changed after each of ``steps`` (as equal as whole pixels allow), from 0 to all."""
    return np.round(np.linspace(0, pixels, steps + 1)).astype(np.int64)


def curve(adapter, model, start: np.ndarray, end: np.ndarray, order: np.ndarray, counts: np.ndarray,
          target: int, score: str, batch_size: int) -> np.ndarray:
    """Scores as the pixels ``order[:count]`` go from ``start`` to ``end`` (H, W, C), for every count."""
    rows, cols = start.shape[:2]
    flat_rows, flat_cols = np.unravel_index(order, (rows, cols))
    values = np.zeros(len(counts))
    for begin in range(0, len(counts), batch_size):
        chunk = counts[begin:begin + batch_size]
        batch = np.repeat(start[None], len(chunk), axis=0)
        for k, count in enumerate(chunk):
            batch[k, flat_rows[:count], flat_cols[:count]] = end[flat_rows[:count], flat_cols[:count]]
        logits = adapter.predict(model, batch, batch_size)
        values[begin:begin + len(chunk)] = select_scores(logits, np.full(len(chunk), target), score)
    return values


def faithfulness(model: Any, images: Any = None, *, method: str = "gradient", metric: str = "deletion",
                 steps: int = 224, baseline: float = 0.0, score: str = "prob", target: Any = None, seed: int = 0,
                 batch_size: int = 32, preprocess=None, **method_options) -> FaithfulnessResult:
    """The ``metric`` curve of ``method``'s maps on ``images`` (default: the bundled photo), and a random one.

    ``baseline``: the fill value of deletion in model-input space. ``batch_size``: forward passes per batch
    (memory bound). ``method_options`` go to the method (e.g. ``n_steps`` of integrated_gradients).
    """
    if metric not in METRICS:
        raise BadInputError("metric", expected=f"one of {', '.join(METRICS)}", got=repr(metric))
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise BadInputError("steps", expected="a whole number >= 1", got=repr(steps))
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise BadInputError("batch_size", expected="a whole number >= 1", got=repr(batch_size))
    loaded = as_loaded_model(model, preprocess)
    adapter = adapter_for(loaded.module)
    explained = attribute(loaded, images, method=method, target=target, **method_options)
    inputs = prepare_inputs(images, loaded.preprocess).arrays
    targets = explained.targets
    n, rows, cols, _ = inputs.shape
    if steps > rows * cols:
        raise BadInputError("steps", expected=f"at most the number of pixels ({rows * cols})", got=str(steps))
    counts = step_sizes(rows * cols, steps)
    rng = np.random.default_rng(seed)
    curves, random_curves = np.zeros((n, steps + 1)), np.zeros((n, steps + 1))
    for i in range(n):
        if metric == "deletion":
            start, end = inputs[i], np.full_like(inputs[i], baseline)
        else:
            start, end = _rise_blur(inputs[i]), inputs[i]
        # Largest first; ties keep raster order (a stable sort), so the ranking is reproducible.
        order = np.argsort(-explained.maps[i].ravel(), kind="stable")
        curves[i] = curve(adapter, loaded.module, start, end, order, counts, int(targets[i]), score, batch_size)
        random_curves[i] = curve(adapter, loaded.module, start, end, rng.permutation(rows * cols), counts,
                                 int(targets[i]), score, batch_size)
    fractions = counts / (rows * cols)
    options = {"steps": steps, "baseline": baseline if metric == "deletion" else
               f"Gaussian blur sigma {RISE_SIGMA:g} px, radius {RISE_RADIUS}", "seed": seed,
               "method_options": dict(explained.options)}
    return FaithfulnessResult(metric, explained.method, fractions, curves, area(fractions, curves), random_curves,
                              area(fractions, random_curves), targets, score, loaded.name, options)


def _rise_blur(image: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma=(RISE_SIGMA, RISE_SIGMA, 0), truncate=RISE_RADIUS / RISE_SIGMA,
                           mode="reflect").astype(np.float32)
