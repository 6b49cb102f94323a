"""The four similarities of Adebayo et al. (2018) between an original map and a randomised one.

Example:
    >>> import numpy as np
    >>> a = np.arange(64.0).reshape(8, 8)
    >>> round(similarities(a, a)["spearman_abs"], 6), round(similarities(a, -a)["spearman"], 6)
    (1.0, -1.0)

- ``spearman``: Spearman rank correlation of the signed maps; ``spearman_abs``: of their absolute values;
- ``ssim``: structural similarity (scikit-image) of the two maps, each scaled to [0, 1] by its own min and max
  (as the paper normalises maps before comparing them);
- ``hog``: Pearson correlation of the HOG features (scikit-image) of the two maps scaled the same way.
A constant map has no ranks or gradients: its correlations are 0 (no evidence of similarity).
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInputError

MEASURES = ("spearman", "spearman_abs", "ssim", "hog")
MIN_SIDE = 7


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values.ravel())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel().astype(np.float64) - a.mean()
    b = b.ravel().astype(np.float64) - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(_ranks(a), _ranks(b))


def unit_scale(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return np.zeros_like(values, np.float64) if high <= low else (values - low) / (high - low)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(unit_scale(a), unit_scale(b), data_range=1.0))


def hog_correlation(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.feature import hog

    cell = max(2, min(a.shape) // 16)
    features = [hog(unit_scale(m), pixels_per_cell=(cell, cell), cells_per_block=(2, 2)) for m in (a, b)]
    return pearson(*features)


def check_shapes(*shapes: tuple[int, ...]) -> None:
    """Refuse maps the four similarities cannot compare: of different shapes, or smaller than 7 x 7."""
    if len(set(shapes)) > 1 or any(len(shape) != 2 or min(shape) < MIN_SIDE for shape in shapes):
        raise BadInputError("maps to compare", expected=f"maps of one shape, at least {MIN_SIDE} x {MIN_SIDE} "
                            "pixels (SSIM's 7 x 7 window, HOG's cells)",
                            got=f"shapes {', '.join(str(tuple(s)) for s in shapes)}", fix="use larger model inputs")


def similarities(original: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """The paper's four similarities of two (H, W) maps (at least 7 x 7: SSIM's window)."""
    check_shapes(original.shape, other.shape)
    return {
        "spearman": spearman(original, other),
        "spearman_abs": spearman(np.abs(original), np.abs(other)),
        "ssim": ssim(original, other),
        "hog": hog_correlation(original, other),
    }
