"""Deletion and insertion curves (Petsiuk et al. 2018, RISE): is the map's ranking of pixels faithful?

Example:
    >>> import gradsight                                                                            # doctest: +SKIP
    >>> f = gradsight.faithfulness("efficientnet_lite0", method="gradient", metric="deletion")  # doctest: +SKIP
    >>> f.auc[0], f.random_auc[0]          # lower than the random order is better for deletion  # doctest: +SKIP

Pixels (all channels of a pixel together) are taken in the order of the map, largest first. Deletion starts
from the image and fills them with a baseline (zeros in model-input space by default); insertion starts from a
blurred copy (or from the baseline, when one is given) and puts them back. The blur is RISE's own
(``eclique/RISE`` evaluation.py): an 11 x 11 kernel made by ``scipy.ndimage.gaussian_filter`` of sigma 5 on a
centred delta (so its tails are folded back in, not cut), applied per channel with zero padding in model-input
space. After each of ``steps`` equal steps the score is the target class probability (``score="logit"`` for the
logit). Curves have ``steps + 1`` points over the fraction of pixels 0..1; the area under them (trapezoid over
that fraction) lies in [0, 1] for probabilities. A random order (seeded; one permutation per call, the same for
every image, so a curve does not depend on which other images are in the batch) is computed alongside as the
floor to beat. The default ``steps=224`` takes 225 forward passes per curve (450 with the random curve) on a
224 x 224 image: RISE's 224 pixels per step.

Speed: the forward passes are batched (``batch_size``) and run on the adapter's fast path (PyTorch: BatchNorm
folded into the convolutions, channels-last, inference mode), and each perturbed image is the previous one with
the next pixels copied in. On a CPU the passes cost what the network's arithmetic costs (EfficientNet-Lite0,
one thread: ~15 ms an image at any batch, a third of it 1 x 1 convolutions already near the core's peak), so
batching and folding gain ~2x over a loop of single passes on two threads (a quiet 2-core machine, batches of
4, bench/evaluation.py); larger batches are slower per image there, their activations leaving the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..adapters.discovery import adapter_for
from ..errors import BadInputError
from ..inputs import prepare_inputs
from ..methods.attribute import attribute
from ..methods.baselines import baseline_inputs
from ..methods.job import SCORES, images_per_call, positive_int, select_scores
from ..methods.registry import get_method
from ..methods.registry import method_options as checked_options
from ..models.registry import as_loaded_model

METRICS = ("deletion", "insertion")
RISE_SIGMA, RISE_SIZE = 5.0, 11  # RISE's insertion blur: gkern(klen=11, nsig=5), zero padding klen // 2
RISE_START = "RISE blur: gkern(11, 5) (gaussian_filter of a delta, sigma 5), zero padding 5, model-input space"
RANDOM_ORDER = "one seeded permutation of the pixels, the same for every image and method"


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
          target: int, score: str, batch_size: int, fast: bool = True) -> np.ndarray:
    """Scores as the pixels ``order[:count]`` go from ``start`` to ``end`` (H, W, C), for every count.

    Example:
        >>> curve(adapter, net, x, np.zeros_like(x), order, step_sizes(x.shape[0] * x.shape[1], 224),
        ...       target=20, score="prob", batch_size=8)                                   # doctest: +SKIP

    ``counts`` must not decrease: each image is the one before with the next pixels changed, so a batch is
    built by copying one running image (no pass over every pixel of every image to choose its source).
    ``fast``: the adapter's fast forward path (PyTorch: BatchNorm folded; equal to rounding).
    """
    if np.any(np.diff(counts) < 0):
        raise BadInputError("counts", expected="pixel counts that do not decrease", got=str(counts[:8]))
    channels = start.shape[-1]
    current = np.array(start, np.float32)  # the image with the pixels so far changed; the caller's is untouched
    flat, source = current.reshape(-1, channels), np.asarray(end, np.float32).reshape(-1, channels)
    per_call = images_per_call(current.nbytes, batch_size)  # the forward passes still take batch_size
    images = np.empty((min(per_call, len(counts)), *current.shape), np.float32)  # reused by every call
    values, done = np.zeros(len(counts)), 0
    for begin in range(0, len(counts), per_call):
        part = counts[begin:begin + per_call]
        for j, count in enumerate(part):
            fresh = order[done:count]
            flat[fresh] = source[fresh]
            done = max(done, int(count))
            images[j] = current
        logits = adapter.predict(model, images[:len(part)], batch_size, fast=fast)
        values[begin:begin + len(part)] = select_scores(logits, np.full(len(part), target), score)
    return values


def faithfulness(model: Any, images: Any = None, *, method: str = "gradient", metric: str = "deletion",
                 steps: int = 224, baseline: Any = None, score: str = "prob", target: Any = None, seed: int = 0,
                 batch_size: int = 4, fast: bool = True, preprocess=None, method_options: dict | None = None,
                 **options) -> FaithfulnessResult:
    """The ``metric`` curve of ``method``'s maps on ``images`` (default: the bundled photo), and a random one.

    ``baseline``: where pixels go (deletion) or come from (insertion), in model-input space; None is the
    papers' (zeros for deletion, RISE's blur for insertion); else a number, "zeros", "black", "blur" or an
    array (H, W, C) or (N, H, W, C), as Integrated Gradients' ``baseline``, so that the two can be the same.
    ``batch_size``: forward passes per batch (memory bound; 4 because on CPU a pass costs more per image in
    larger batches, whose activations leave the cache: EfficientNet-Lite0, 2 threads, 8.6 ms an image at 4
    against 11 ms at 8, bench/evaluation.py).
    ``fast``: the adapter's fast forward path for the curves and the map (PyTorch: the BatchNorm-folded copy
    under inference mode; Keras: a compiled tf.function), equal to the plain model to float32 rounding (curves
    within 1e-5); ``fast=False`` runs the model as it is. ``method_options``: the method's options, e.g.
    ``{"baseline": ...}`` for integrated_gradients (a name this function also has); other keywords go to the
    method as well (e.g. ``n_steps=64``).
    """
    if metric not in METRICS:
        raise BadInputError("metric", expected=f"one of {', '.join(METRICS)}", got=repr(metric))
    steps = positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    if score not in SCORES:
        raise BadInputError("score", expected=f"one of {', '.join(SCORES)}", got=repr(score))
    given = dict(method_options or {})
    twice = sorted(set(given) & set(options))
    if twice:
        raise BadInputError(f"method option {twice[0]!r}", expected="each option given once",
                            got="both as a keyword and in method_options", fix="give it in method_options only")
    given.update(options)
    checked_options(get_method(method), given)  # unknown methods and options are refused before any work
    loaded = as_loaded_model(model, preprocess=preprocess)
    adapter = adapter_for(loaded.module)
    inputs = prepare_inputs(images, loaded.preprocess).arrays
    n, rows, cols, _ = inputs.shape
    if steps > rows * cols:
        raise BadInputError("steps", expected=f"at most the number of pixels ({rows * cols})", got=str(steps))
    fill, described = _fill(baseline, metric, inputs, loaded.preprocess)
    explained = attribute(loaded, images, method=method, target=target, fast=fast, **given)
    targets = explained.targets
    counts = step_sizes(rows * cols, steps)
    random_order = np.random.default_rng(seed).permutation(rows * cols)
    curves, random_curves = np.zeros((n, steps + 1)), np.zeros((n, steps + 1))
    with adapter.unchanged_during(loaded.module):  # every curve's passes back to back: check the fast path once
        for i in range(n):
            start, end = (inputs[i], fill[i]) if metric == "deletion" else (fill[i], inputs[i])
            # Largest first; ties keep raster order (a stable sort), so the ranking is reproducible.
            order = np.argsort(-explained.maps[i].ravel(), kind="stable")
            curves[i] = curve(adapter, loaded.module, start, end, order, counts, int(targets[i]), score,
                              batch_size, fast)
            random_curves[i] = curve(adapter, loaded.module, start, end, random_order, counts, int(targets[i]),
                                     score, batch_size, fast)
    fractions = counts / (rows * cols)
    recorded = {"steps": steps, "pixels": rows * cols, "baseline": described, "seed": seed, "fast": bool(fast),
                "random_order": RANDOM_ORDER, "method_options": dict(explained.options)}
    return FaithfulnessResult(metric, explained.method, fractions, curves, area(fractions, curves), random_curves,
                              area(fractions, random_curves), targets, score, loaded.name, recorded)


def _fill(baseline: Any, metric: str, inputs: np.ndarray, preprocess) -> tuple[np.ndarray, str]:
    """(N, H, W, C) model input the pixels go to (deletion) or come from (insertion), and what it is."""
    if baseline is None:
        if metric == "insertion":
            return np.stack([_rise_blur(x) for x in inputs]), RISE_START
        baseline = 0.0
    if isinstance(baseline, bool):
        raise BadInputError("baseline", expected="a number, 'zeros', 'black', 'blur' or an array", got=repr(baseline))
    if isinstance(baseline, (int, float, np.integer, np.floating)):
        if not np.isfinite(baseline):
            raise BadInputError("baseline", expected="a finite number", got=repr(baseline))
        return np.full_like(inputs, float(baseline)), f"constant {float(baseline):g} (model-input space)"
    try:
        return baseline_inputs(SimpleNamespace(inputs=inputs, preprocess=preprocess), baseline)
    except BadInputError as err:  # the same rules as Integrated Gradients' baseline, named as this one
        raise BadInputError("baseline" if err.what.startswith("baseline") else err.what, expected=err.expected,
                            got=err.got, fix=err.fix) from None


def rise_kernel() -> np.ndarray:
    """RISE's ``gkern(11, 5)``: a centred delta in an 11 x 11 array smoothed by ``gaussian_filter(sigma=5)``.

    scipy's default truncation (4 sigma) and reflecting edges fold the Gaussian's tails back into the 11 x 11
    square: a flatter kernel than a Gaussian cut at radius 5. Its weights sum to 1.
    """
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((RISE_SIZE, RISE_SIZE))
    delta[RISE_SIZE // 2, RISE_SIZE // 2] = 1.0
    return gaussian_filter(delta, RISE_SIGMA)


def _rise_blur(image: np.ndarray) -> np.ndarray:
    """RISE's insertion start of one (H, W, C) input: each channel convolved with ``rise_kernel()``, zeros
    outside the image (``conv2d(x, kern, padding=5)`` in RISE's evaluation code)."""
    from scipy.ndimage import correlate

    kernel = rise_kernel()
    planes = [correlate(image[..., c].astype(np.float64), kernel, mode="constant", cval=0.0)
              for c in range(image.shape[-1])]
    return np.stack(planes, axis=-1).astype(np.float32)
