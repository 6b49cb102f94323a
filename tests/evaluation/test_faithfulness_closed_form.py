"""Deletion and insertion against closed forms: brute force over every pixel order of an additive model,
exact score differences on a linear model, constant curves, and RISE's own blur and AUC."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from evaluation_models import additive_model, linear_model, normal_inputs, rise_auc, rise_blur

from gradsight.evaluation.faithfulness import _rise_blur, area, faithfulness

ROWS, COLS = 2, 3  # six pixels: 6! = 720 orders, brute force in well under a second


def _p0(net, batch_nhwc: np.ndarray) -> np.ndarray:
    """p(class 0) straight from the model (the oracle does not use gradsight's forward pass)."""
    with torch.no_grad():
        logits = net(torch.from_numpy(np.ascontiguousarray(batch_nhwc.transpose(0, 3, 1, 2))))
    return torch.softmax(logits.double(), dim=1)[:, 0].numpy()


def _curves_of_every_order(net, start: np.ndarray, end: np.ndarray) -> tuple[list, np.ndarray]:
    """For every order of the pixels: the scores as they go from ``start`` to ``end`` one at a time."""
    orders = list(itertools.permutations(range(ROWS * COLS)))
    batch = []
    for order in orders:
        for k in range(ROWS * COLS + 1):
            x = start.copy()
            for j in order[:k]:
                x[j // COLS, j % COLS] = end[j // COLS, j % COLS]
            batch.append(x)
    scores = _p0(net, np.stack(batch)).reshape(len(orders), ROWS * COLS + 1)
    return orders, scores


@pytest.fixture
def toy():
    rng = np.random.default_rng(7)
    c = rng.uniform(-1.5, 1.5, (ROWS, COLS))
    x = normal_inputs(1, ROWS, COLS, channels=1, seed=3)
    return additive_model(c), c, x


def test_deletion_of_the_exact_attribution_is_the_lowest_of_all_orders(toy):
    net, c, x = toy
    # Integrated Gradients from the zero baseline gives exactly c_j x_j on an additive model.
    result = faithfulness(net, x, method="integrated_gradients", metric="deletion", steps=ROWS * COLS, target=0)
    exact = (c * x[0, ..., 0]).ravel()
    orders, curves = _curves_of_every_order(net, x[0], np.zeros_like(x[0]))
    best = orders.index(tuple(np.argsort(-exact, kind="stable")))
    np.testing.assert_allclose(result.curves[0], curves[best], rtol=1e-5, atol=1e-6)
    # Pointwise: after k deletions the sum left is smallest when the k largest contributions went first.
    assert (result.curves[0] <= curves.min(axis=0) + 1e-6).all()
    aucs = np.array([rise_auc(curve) for curve in curves])
    assert result.auc[0] == pytest.approx(aucs.min(), abs=1e-6)
    assert np.sum(aucs < aucs.min() + 1e-9) == 1  # no other order ties with it: the toy discriminates
    assert result.random_auc[0] > result.auc[0]


def test_insertion_of_the_exact_attribution_is_the_highest_of_all_orders(toy):
    net, c, x = toy
    blurred = rise_blur(x[0])
    # Inserting pixel j into the blurred image adds c_j (x_j - blur_j): IG from that baseline, exactly.
    result = faithfulness(net, x, method="integrated_gradients", metric="insertion", steps=ROWS * COLS, target=0,
                          method_options={"baseline": blurred})
    exact = (c * (x[0] - blurred)[..., 0]).ravel()
    orders, curves = _curves_of_every_order(net, blurred, x[0])
    best = orders.index(tuple(np.argsort(-exact, kind="stable")))
    np.testing.assert_allclose(result.curves[0], curves[best], rtol=1e-5, atol=1e-6)
    assert (result.curves[0] >= curves.max(axis=0) - 1e-6).all()
    aucs = np.array([rise_auc(curve) for curve in curves])
    assert result.auc[0] == pytest.approx(aucs.max(), abs=1e-6)


@pytest.mark.parametrize("fill", ["scalar", "array"])
def test_deletion_steps_equal_the_sums_of_the_removed_attributions_on_a_linear_model(fill):
    rows, cols, channels = 4, 4, 3
    rng = np.random.default_rng(11)
    w = rng.normal(size=(rows, cols, channels))
    net = linear_model(w, 0.7)
    x = normal_inputs(2, rows, cols, channels, seed=5)
    base = np.full((rows, cols, channels), 0.25, np.float32) if fill == "scalar" else \
        rng.normal(size=(rows, cols, channels)).astype(np.float32)
    metric_baseline = 0.25 if fill == "scalar" else base
    for steps in (rows * cols, 5):  # one pixel per step, and uneven steps (3 or 4 pixels)
        # The metric's baseline (the fill) and IG's are the same; the method's options go in method_options.
        result = faithfulness(net, x, method="integrated_gradients", metric="deletion", steps=steps, target=0,
                              score="logit", baseline=metric_baseline, method_options={"baseline": base})
        counts = np.round(np.linspace(0, rows * cols, steps + 1)).astype(int)
        for i in range(len(x)):
            attr = (w * (x[i] - base)).sum(axis=-1).ravel()  # IG on a linear model: (x - b) * w, per pixel
            removed = np.concatenate([[0.0], np.cumsum(attr[np.argsort(-attr, kind="stable")])])[counts]
            f_x = float((w * x[i]).sum() + 0.7)
            assert result.curves[i][0] == pytest.approx(f_x, abs=1e-5)
            # F(x) - F(x with S filled by the baseline) = sum of the attributions of S, at every step
            np.testing.assert_allclose(result.curves[i][0] - result.curves[i], removed, rtol=1e-5, atol=1e-5)


def test_a_constant_curve_has_an_area_equal_to_its_value():
    fractions = np.array([0.0, 0.1, 0.35, 0.4, 1.0])  # uneven steps
    assert area(fractions, np.full(5, 0.37)) == pytest.approx(0.37, abs=1e-15)
    net = linear_model(np.zeros((4, 4, 3)), 1.3)  # logits (1.3, -1.3) whatever the input
    result = faithfulness(net, normal_inputs(1, 4), method="gradient", metric="deletion", steps=7)
    p = 1 / (1 + np.exp(-2 * 1.3))
    np.testing.assert_allclose(result.curves[0], p, rtol=1e-6)
    assert result.auc[0] == pytest.approx(p, rel=1e-6)
    assert result.random_auc[0] == pytest.approx(p, rel=1e-6)


def test_our_area_is_rises_auc_for_equal_steps():
    curve = np.random.default_rng(0).uniform(size=225)
    assert area(np.linspace(0, 1, 225), curve) == pytest.approx(rise_auc(curve), abs=1e-12)


def test_the_insertion_start_is_rises_blur():
    image = normal_inputs(1, 20, 17, seed=2)[0]
    np.testing.assert_allclose(_rise_blur(image), rise_blur(image), rtol=1e-5, atol=1e-6)
