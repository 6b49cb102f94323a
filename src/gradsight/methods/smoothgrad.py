"""SmoothGrad (Smilkov et al. 2017): a pixel method's raw attribution averaged over noisy copies of the input.

Example:
    >>> import gradsight                                                                   # doctest: +SKIP
    >>> r = gradsight.attribute("efficientnet_lite0", method="smoothgrad", n_samples=50)   # doctest: +SKIP
    >>> r.options["noise_level"], r.options["base_method"]                                 # doctest: +SKIP
    (0.15, 'gradient')

The noise is relative, as in the paper and PAIR: sigma = noise_level * (max - min) of each preprocessed input
(``stdev=`` gives an absolute sigma instead). Sample s adds sigma times the standard normals of the NumPy stream
``default_rng([seed, s])`` (float32, the input's shape) to every input: the result depends neither on the
chunking nor on the other images of the batch. Every noisy copy is explained for the class of the clean input.
``variant``: "mean" (SmoothGrad), "square" (SmoothGrad^2: the mean of squares) or "var" (VarGrad: the
biased variance, dividing by n_samples, as Adebayo et al. and Captum). The wrapped ``base_method`` (any pixel
method; ``base_options`` for its own options, where an (N, H, W, C) array such as a baseline gives one per
image) works on batches of at most ``internal_batch_size`` noisy copies (passes of even sizes), so memory
does not grow with ``n_samples``. (The option is not called ``method``: that keyword of ``attribute`` names
SmoothGrad itself.) The default 8 keeps ResNet50's largest activations (3.2 MB a copy) under glibc's 32 MiB
limit for reusing freed memory; larger blocks are mapped afresh, page by page, in every pass: 50 samples on
ResNet50 took 3.7 s with 44k page faults in chunks of 8, 4.0 s with 394k in chunks of 13.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..errors import BadInputError
from .job import AttributionJob, add_rows, even_chunks, positive_int
from .registry import MethodMaps, get_method, method_options, register_method, to_map

VARIANTS = ("mean", "square", "var")


def _sigma_option(name: str, value, meaning: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf"):
        raise BadInputError(name, expected=f"a finite number >= 0 ({meaning})", got=repr(value))
    return float(value)


def noise_sigmas(inputs: np.ndarray, noise_level: float, stdev: float | None) -> np.ndarray:
    """One sigma per input: ``stdev`` if given, else noise_level * (max - min) of that input."""
    if stdev is not None:
        return np.full(len(inputs), _sigma_option("stdev", stdev, "the absolute noise sigma"))
    level = _sigma_option("noise_level", noise_level, "sigma / (max - min) of each input")
    flat = inputs.reshape(len(inputs), -1)
    return level * (flat.max(axis=1) - flat.min(axis=1)).astype(np.float64)


def _for_images(options: dict, image: np.ndarray, count: int) -> dict:
    """The wrapped method's options for noisy copies of inputs ``image``: (N, H, W, C) arrays follow them."""
    chosen = {}
    for key, value in options.items():
        if isinstance(value, np.ndarray) and value.ndim == 4:
            if len(value) != count:
                raise BadInputError(f"base_options {key!r}", expected=f"one entry per input: shape ({count}, ...) "
                                    "for this batch", got=f"shape {value.shape}",
                                    fix="give one (H, W, C) array for all inputs, or a batch_size that holds "
                                        "every input")
            value = value[image]
        chosen[key] = value
    return chosen


def _described(options: dict) -> dict:
    return {k: (f"array of shape {tuple(v.shape)}" if isinstance(v, np.ndarray) else v) for k, v in options.items()}


@register_method("smoothgrad", display="max_abs",
                 reference="Smilkov, Thorat, Kim, Viegas, Wattenberg 2017, SmoothGrad (arXiv:1706.03825); "
                           "VarGrad: Adebayo et al. 2018")
def smoothgrad(job: AttributionJob, *, base_method: str = "gradient", n_samples: int = 50,
               noise_level: float = 0.15, stdev: float | None = None, variant: str = "mean", seed: int = 0,
               internal_batch_size: int = 8, base_options: dict | None = None) -> MethodMaps:
    """Average of a pixel method's raw attribution over noisy copies; the map as the wrapped method shows it."""
    inner = get_method(base_method)
    if inner.kind != "pixel" or inner.name == "smoothgrad":
        raise BadInputError("base_method", expected="a pixel method (gradient, input_x_gradient, "
                            "integrated_gradients, guided_backprop, deconvnet)", got=repr(base_method))
    if variant not in VARIANTS:
        raise BadInputError("variant", expected=f"one of {', '.join(VARIANTS)}", got=repr(variant))
    n_samples = positive_int("n_samples", n_samples)
    internal_batch_size = positive_int("internal_batch_size", internal_batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInputError("seed", expected="a whole number >= 0", got=repr(seed))
    options = base_options_for(inner, base_options)
    sigmas = noise_sigmas(job.inputs, noise_level, stdev)
    targets = job.resolved_targets()
    n, shape = len(job), job.inputs.shape[1:]
    total = np.zeros(job.inputs.shape, np.float64)
    squares = np.zeros(job.inputs.shape, np.float64) if variant != "mean" else None
    pairs = [(s, i) for s in range(n_samples) for i in range(n)]
    for chunk in even_chunks(len(pairs), internal_batch_size):
        sample, image = (np.array(v) for v in zip(*pairs[chunk]))
        noise = np.stack([np.random.default_rng([int(seed), int(s)]).standard_normal(shape, dtype=np.float32)
                          for s in sample])
        noisy = job.inputs[image] + noise * sigmas.astype(np.float32)[image, None, None, None]
        out = inner.fn(job.with_inputs(noisy, targets[image]), **_for_images(options, image, n))
        add_rows(total, image, out.attribution)
        if squares is not None:
            add_rows(squares, image, np.square(out.attribution, dtype=np.float64))
    mean = total / n_samples
    if variant == "mean":
        attribution = mean
    elif variant == "square":
        attribution = squares / n_samples
    else:
        attribution = np.maximum(squares / n_samples - mean ** 2, 0.0)
    attribution = attribution.astype(np.float32)
    display = inner.display if variant == "mean" else "max_abs"
    return MethodMaps(maps=to_map(attribution, display), attribution=attribution, logits=job.logits(),
                      targets=targets, per_image={"sigma": sigmas.astype(np.float64)},
                      effective={"sigma": [float(s) for s in sigmas],
                                                  "base_options": _described(options),
                                                  "var_estimator": "biased (divides by n_samples)"
                                                  if variant == "var" else None})


def base_options_for(inner, given: dict | None) -> dict:
    if given is not None and not isinstance(given, dict):
        raise BadInputError("base_options", expected="a dict of the wrapped method's options", got=repr(given))
    return method_options(inner, dict(given or {}))
