"""SmoothGrad (Smilkov et al. 2017): a pixel method's raw attribution averaged over noisy copies of the input.

Example:
    >>> import gradsight                                                                   # doctest: +SKIP
    >>> r = gradsight.attribute("efficientnet_lite0", method="smoothgrad", n_samples=50)   # doctest: +SKIP
    >>> r.options["noise_level"], r.options["method"]                                      # doctest: +SKIP
    (0.15, 'gradient')

The noise is relative, as in the paper and PAIR: sigma = noise_level * (max - min) of each preprocessed input
(``stdev=`` gives an absolute sigma instead). Every noisy copy is explained for the class of the clean input.
``variant``: "mean" (SmoothGrad), "square" (SmoothGrad^2: the mean of squares) or "var" (VarGrad: the
biased variance, dividing by n_samples, as Adebayo et al. and Captum). The wrapped method (any pixel method,
``method_options`` for its own options) works on batches of noisy copies ``internal_batch_size`` at a time,
so memory does not grow with ``n_samples``.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInputError
from .job import AttributionJob
from .registry import MethodMaps, get_method, method_options, register_method, to_map

VARIANTS = ("mean", "square", "var")


def noise_sigmas(inputs: np.ndarray, noise_level: float, stdev: float | None) -> np.ndarray:
    """One sigma per input: ``stdev`` if given, else noise_level * (max - min) of that input."""
    if stdev is not None:
        if not (isinstance(stdev, (int, float)) and stdev >= 0):
            raise BadInputError("stdev", expected="a number >= 0 (absolute noise sigma)", got=repr(stdev))
        return np.full(len(inputs), float(stdev))
    if not (isinstance(noise_level, (int, float)) and noise_level >= 0):
        raise BadInputError("noise_level", expected="a number >= 0 (sigma / (max - min) of the input)",
                            got=repr(noise_level))
    flat = inputs.reshape(len(inputs), -1)
    return noise_level * (flat.max(axis=1) - flat.min(axis=1)).astype(np.float64)


@register_method("smoothgrad", display="max_abs",
                 reference="Smilkov, Thorat, Kim, Viegas, Wattenberg 2017, SmoothGrad (arXiv:1706.03825); "
                           "VarGrad: Adebayo et al. 2018")
def smoothgrad(job: AttributionJob, *, method: str = "gradient", n_samples: int = 50, noise_level: float = 0.15,
               stdev: float | None = None, variant: str = "mean", seed: int = 0, internal_batch_size: int = 32,
               method_options: dict | None = None) -> MethodMaps:
    """Average of a pixel method's raw attribution over noisy copies; the map as the wrapped method shows it."""
    inner = get_method(method)
    if inner.kind != "pixel" or inner.name == "smoothgrad":
        raise BadInputError("smoothgrad method", expected="a pixel method (gradient, input_x_gradient, "
                            "integrated_gradients, guided_backprop, deconvnet)", got=repr(method))
    if variant not in VARIANTS:
        raise BadInputError("variant", expected=f"one of {', '.join(VARIANTS)}", got=repr(variant))
    for name, value in (("n_samples", n_samples), ("internal_batch_size", internal_batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadInputError(name, expected="a whole number >= 1", got=repr(value))
    options = method_options_for(inner, method_options)
    sigmas = noise_sigmas(job.inputs, noise_level, stdev)
    targets = job.resolved_targets()
    n, shape = len(job), job.inputs.shape[1:]
    total = np.zeros(job.inputs.shape, np.float64)
    squares = np.zeros(job.inputs.shape, np.float64) if variant != "mean" else None
    pairs = [(s, i) for s in range(n_samples) for i in range(n)]
    for start in range(0, len(pairs), internal_batch_size):
        sample, image = (np.array(v) for v in zip(*pairs[start:start + internal_batch_size]))
        # Sample s draws its noise from its own stream (seed, s): the result depends neither on the chunking
        # nor on which other images share the batch.
        noise = np.stack([np.random.default_rng([seed, int(s)]).standard_normal(shape, dtype=np.float32)
                          for s in sample])
        noisy = job.inputs[image] + noise * sigmas.astype(np.float32)[image, None, None, None]
        out = inner.fn(job.with_inputs(noisy, targets[image]), **options)
        np.add.at(total, image, out.attribution)
        if squares is not None:
            np.add.at(squares, image, out.attribution.astype(np.float64) ** 2)
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
                      targets=targets, effective={"sigma": [float(s) for s in sigmas],
                                                  "method_options": options,
                                                  "var_estimator": "biased (divides by n_samples)"
                                                  if variant == "var" else None})


def method_options_for(inner, given: dict | None) -> dict:
    if given is not None and not isinstance(given, dict):
        raise BadInputError("method_options", expected="a dict of the wrapped method's options", got=repr(given))
    return method_options(inner, dict(given or {}))
