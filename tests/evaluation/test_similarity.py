"""The paper's four similarities against independent computations: scipy's Spearman, SSIM written out from
Wang et al. (2004), and invariances every one of them must have."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from gradsight.evaluation.similarity import hog_correlation, pearson, similarities, ssim


def _ssim_by_hand(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    """Wang et al. 2004 with scikit-image's documented defaults: maps scaled to [0, 1] by their own min and max,
    7 x 7 uniform windows, sample covariances (N - 1), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1, the mean
    of the SSIM map over the windows that lie inside the image."""
    a = (a - a.min()) / (a.max() - a.min())
    b = (b - b.min()) / (b.max() - b.min())
    n = win * win
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for r in range(a.shape[0] - win + 1):
        for c in range(a.shape[1] - win + 1):
            x, y = a[r:r + win, c:c + win].ravel(), b[r:r + win, c:c + win].ravel()
            mx, my = x.mean(), y.mean()
            vx, vy = x.var() * n / (n - 1), y.var() * n / (n - 1)
            cxy = ((x - mx) * (y - my)).sum() / (n - 1)
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


@pytest.fixture
def maps():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(20, 24))
    b = 0.6 * a + 0.8 * rng.normal(size=(20, 24))
    return np.round(a, 1), np.round(b, 1)  # rounded: many ties, ranked by their average as scipy does


def test_spearman_is_scipys_with_ties(maps):
    a, b = maps
    s = similarities(a, b)
    assert s["spearman"] == pytest.approx(spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)
    assert s["spearman_abs"] == pytest.approx(spearmanr(np.abs(a).ravel(), np.abs(b).ravel())[0], abs=1e-12)
    assert 0.3 < s["spearman"] < 0.9  # a real, partial correlation


def test_ssim_is_the_formula_of_wang_et_al(maps):
    a, b = maps
    assert ssim(a, b) == pytest.approx(_ssim_by_hand(a, b), abs=1e-9)


def test_sign_scale_and_offset():
    a = np.random.default_rng(0).normal(size=(16, 16))
    s = similarities(a, -a)
    assert s["spearman"] == pytest.approx(-1.0) and s["spearman_abs"] == pytest.approx(1.0)
    same = similarities(a, 3.0 * a + 2.0)  # SSIM and HOG compare maps after scaling each to [0, 1]
    assert same["spearman"] == pytest.approx(1.0)
    assert same["ssim"] == pytest.approx(1.0) and same["hog"] == pytest.approx(1.0)
    assert hog_correlation(a, 3.0 * a + 2.0) == pytest.approx(1.0)
    assert similarities(np.abs(a), 3.0 * np.abs(a) + 2.0) == pytest.approx(
        {"spearman": 1.0, "spearman_abs": 1.0, "ssim": 1.0, "hog": 1.0})


def test_pearson_is_numpys_and_a_constant_map_gives_no_evidence():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(9, 9)).astype(np.float32), rng.normal(size=(9, 9)).astype(np.float32)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a.ravel().astype(np.float64), b.ravel())[0, 1], abs=1e-12)
    s = similarities(a, np.zeros((9, 9)))
    assert s["spearman"] == 0.0 and s["spearman_abs"] == 0.0 and s["hog"] == 0.0
