"""Model randomisation (Adebayo et al. 2018): maps that depend on the weights change, guided backprop barely does;
the similarities are the ones the stored maps give; results do not depend on chunking or batch composition."""

from __future__ import annotations

import numpy as np
import pytest
from evaluation_models import normal_inputs
from scipy.stats import spearmanr
from testkit import small_cnn

from gradsight.evaluation.sanity import sanity_check


def test_randomising_every_block_of_a_small_cnn_changes_its_gradient_map():
    net, x = small_cnn(seed=1), normal_inputs(2, 24, seed=8)
    report = sanity_check(net, x, methods=["gradient"], seed=3)
    assert report.blocks == ("12", "8", "7", "4", "3", "1", "0")  # top (the logits) first
    final = report.scores["gradient"]["spearman_abs"][-1]
    assert (np.abs(final) < 0.5).all(), final  # far from 1: a map of the model, not of the input
    assert report.verdicts() == {"gradient": True}
    # Every similarity is the one its stored maps give (scipy's Spearman as the oracle).
    maps = report.maps["gradient"]
    for s in range(len(report.steps)):
        for i in range(len(x)):
            expected = spearmanr(np.abs(maps[0, i]).ravel(), np.abs(maps[s + 1, i]).ravel())[0]
            assert report.scores["gradient"]["spearman_abs"][s, i] == pytest.approx(expected, abs=1e-9)
            expected = spearmanr(maps[0, i].ravel(), maps[s + 1, i].ravel())[0]
            assert report.scores["gradient"]["spearman"][s, i] == pytest.approx(expected, abs=1e-9)


def test_the_randomised_models_really_differ_step_by_step():
    net, x = small_cnn(seed=1), normal_inputs(1, 24, seed=8)
    report = sanity_check(net, x, methods=["gradient"], seed=3)
    maps = report.maps["gradient"][:, 0]
    # the top block alone already changes the gradient (a different class weighting of the features) ...
    assert not np.allclose(maps[1], maps[0], rtol=1e-3)
    # ... and each further block changes it again: no step is a copy of the one before
    for s in range(1, len(maps)):
        assert not np.allclose(maps[s], maps[s - 1], rtol=1e-3), report.steps[s - 1]


def test_chunked_equals_unchunked_and_images_do_not_influence_each_other():
    net, x = small_cnn(seed=1), normal_inputs(3, 16, seed=9)
    together = sanity_check(net, x, methods=["gradient", "grad_cam"], batch_size=8, seed=2)
    chunked = sanity_check(net, x, methods=["gradient", "grad_cam"], batch_size=1, seed=2)
    for m in ("gradient", "grad_cam"):
        scale = np.abs(together.maps[m]).max()
        np.testing.assert_allclose(chunked.maps[m], together.maps[m], rtol=0, atol=1e-5 * scale)
        # Float32 results depend slightly on the batch size (oneDNN picks kernels by shape). Grad-CAM maps are
        # full of near-ties (ReLU zeros, bilinear upsampling of equal values) that such rounding reorders, so
        # their rank correlations agree to 1e-3 only; the gradient's to float precision.
        tolerance = 1e-6 if m == "gradient" else 1e-3
        for k in together.scores[m]:
            np.testing.assert_allclose(chunked.scores[m][k], together.scores[m][k], rtol=0, atol=tolerance)
    np.testing.assert_array_equal(chunked.random_classes, together.random_classes)
    for i in range(3):
        alone = sanity_check(net, x[i:i + 1], methods=["gradient"], seed=2)
        for k in alone.scores["gradient"]:
            np.testing.assert_allclose(alone.scores["gradient"][k][:, 0], together.scores["gradient"][k][:, i],
                                       rtol=1e-5, atol=1e-6)
        # the random other class of an image depends on its own target and the seed, not on its neighbours
        assert alone.random_classes[0] == together.random_classes[i]
        assert alone.random_classes[0] != alone.targets[0]
        np.testing.assert_allclose(alone.random_logit["gradient"]["spearman_abs"][0],
                                   together.random_logit["gradient"]["spearman_abs"][i], rtol=1e-6)


def test_independent_order_randomises_one_block_at_a_time():
    net, x = small_cnn(seed=1), normal_inputs(1, 16, seed=9)
    cascade = sanity_check(net, x, methods=["gradient"], order="cascade", seed=2)
    independent = sanity_check(net, x, methods=["gradient"], order="independent", seed=2)
    assert independent.steps == cascade.steps == cascade.blocks
    # the first step randomises the same (top) block in both orders
    np.testing.assert_allclose(independent.maps["gradient"][1], cascade.maps["gradient"][1], rtol=1e-5)
    # later independent steps leave the top block trained: they differ from the cascade's
    assert not np.allclose(independent.maps["gradient"][-1], cascade.maps["gradient"][-1], rtol=1e-3)


@pytest.mark.slow
def test_the_embedded_model_gradient_depends_on_its_weights_guided_backprop_barely(embedded):
    """The paper's finding on real ImageNet weights and the bundled photo. Measured (seed 0, 12 blocks from
    the classifier down to conv_stem), Spearman |map| per cascade step:
    gradient 0.62 0.51 0.57 0.52 0.34 0.41 0.36 0.34 0.23 0.15 0.03 0.10 (mean 0.35);
    guided   1.00 1.00 1.00 0.98 0.83 0.67 0.42 0.34 0.30 0.19 0.17 0.29 (mean 0.60)
    (each module's weights drawn from the stream crc32(f"0/{module path}")).
    Guided backprop ignores the classifier, the head and the last stage (a third of the weights) and the class
    (random logit 0.999); it changes only once the lower blocks, which make its edge picture, are randomised."""
    report = sanity_check(embedded, None, methods=["gradient", "guided_backprop"], seed=0)
    assert report.blocks[0] == "classifier" and report.blocks[-1] == "conv_stem" and len(report.blocks) == 12
    assert report.targets[0] == 20
    gradient = report.scores["gradient"]["spearman_abs"][:, 0]
    guided = report.scores["guided_backprop"]["spearman_abs"][:, 0]
    assert gradient[0] < 0.8 and gradient[-1] < 0.15  # changes from the first step on, and completely
    assert (guided[:4] > 0.95).all()  # the top four blocks randomised: the same picture
    assert guided[-1] < 0.4  # ... but not immune to the lowest blocks
    assert report.mean_similarity("gradient") < 0.45 and report.mean_similarity("guided_backprop") > 0.52
    assert report.verdicts() == {"gradient": True, "guided_backprop": False}
    # the random-logit check: another class's gradient map differs; guided backprop's is the same picture
    assert report.random_classes[0] != 20
    assert report.random_logit["gradient"]["spearman_abs"][0] < 0.8
    assert report.random_logit["guided_backprop"]["spearman_abs"][0] > 0.98
