"""Integrated Gradients (Sundararajan, Taly, Yan 2017), with its completeness gap reported per image.

Example:
    >>> import gradsight                                                               # doctest: +SKIP
    >>> r = gradsight.attribute("efficientnet_lite0", method="integrated_gradients")   # doctest: +SKIP
    >>> r.per_image["completeness_gap"]            # sum(attr) - (F(x) - F(baseline))  # doctest: +SKIP

attr = (x - b) * integral_0^1 dF(b + a (x - b)) / dx da, the integral by a quadrature rule:
Gauss-Legendre (the default: exact for polynomials of degree <= 2n - 1), left/right/middle Riemann sums
(weights 1/n), or the trapezoid rule on n points whose weights sum to 1 (ends halved). The (image, step) pairs
are evaluated at most ``internal_batch_size`` at a time (passes of even sizes), so peak memory does not grow
with ``n_steps``.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInputError
from .baselines import baseline_inputs
from .job import AttributionJob, add_rows, even_chunks, positive_int, select_scores
from .registry import MethodMaps, register_method, to_map

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "trapezoid")


def quadrature(rule: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points a in [0, 1] and weights (summing to 1) of ``rule`` with ``n`` points.

    Example:
        >>> a, w = quadrature("trapezoid", 3)
        >>> a.tolist(), w.tolist()
        ([0.0, 0.5, 1.0], [0.25, 0.5, 0.25])
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise BadInputError("n_steps", expected="a whole number >= 1", got=repr(n))
    if rule == "gausslegendre":
        from scipy.special import roots_legendre  # O(n) memory; NumPy's leggauss: an n x n matrix

        nodes, weights = roots_legendre(int(n))  # ascending, on [-1, 1], weights sum to 2
        return (nodes + 1) / 2, weights / 2
    if rule == "riemann_left":
        return np.arange(n) / n, np.full(n, 1 / n)
    if rule == "riemann_right":
        return np.arange(1, n + 1) / n, np.full(n, 1 / n)
    if rule == "riemann_middle":
        return (np.arange(n) + 0.5) / n, np.full(n, 1 / n)
    if rule == "trapezoid":
        if n < 2:
            raise BadInputError("n_steps", expected="at least 2 points for the trapezoid rule", got=str(n))
        weights = np.full(n, 1 / (n - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0, 1, n), weights
    raise BadInputError("rule", expected=f"one of {', '.join(RULES)}", got=repr(rule))


def integrate_gradients(job: AttributionJob, base: np.ndarray, alphas: np.ndarray, weights: np.ndarray,
                        internal_batch_size: int) -> np.ndarray:
    """sum_k w_k dF(b + a_k (x - b))/dx for every input, at most ``internal_batch_size`` evaluations per pass."""
    targets = job.resolved_targets()
    pairs = [(i, k) for i in range(len(job)) for k in range(len(alphas))]
    total = np.zeros(job.inputs.shape, np.float64)
    for chunk in even_chunks(len(pairs), internal_batch_size):
        image, step = (np.array(v) for v in zip(*pairs[chunk]))
        a = alphas[step].astype(np.float32)[:, None, None, None]
        x = base[image] + a * (job.inputs[image] - base[image])
        out = job.adapter.score_gradient(job.model, x, [int(t) for t in targets[image]], job.score, job.fast)
        add_rows(total, image, out.gradient, weights[step])
    return total


@register_method("integrated_gradients", display="sum",
                 reference="Sundararajan, Taly, Yan 2017, Axiomatic Attribution for Deep Networks (ICML)")
def integrated_gradients(job: AttributionJob, *, n_steps: int = 50, rule: str = "gausslegendre",
                         baseline="zeros", blur_sigma: float = 5.0, internal_batch_size: int = 16) -> MethodMaps:
    """(x - b) times the path integral of the gradient from the baseline b to x; map = sum over channels."""
    internal_batch_size = positive_int("internal_batch_size", internal_batch_size)
    alphas, weights = quadrature(rule, n_steps)
    base, described = baseline_inputs(job, baseline, blur_sigma)
    targets = job.resolved_targets()
    at_input = job.scores()
    # Before the gradient passes: right after them (their buffers just freed) this one pass took 3-5x longer.
    at_baseline = select_scores(job.adapter.predict(job.model, base), targets, job.score)
    integral = integrate_gradients(job, base, alphas, weights, internal_batch_size)
    attribution = ((job.inputs - base) * integral).astype(np.float32)
    difference = at_input - at_baseline
    gap = attribution.astype(np.float64).sum(axis=(1, 2, 3)) - difference
    return MethodMaps(maps=to_map(attribution, "sum"), attribution=attribution, logits=job.logits(),
                      targets=targets, per_image={"completeness_gap": gap, "score_difference": difference},
                      effective={"baseline": described})
