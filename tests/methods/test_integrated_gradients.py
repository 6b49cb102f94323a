"""Integrated Gradients: closed forms, Captum's IntegratedGradients, completeness on the embedded model.

Conventions: attributions are raw (N, H, W, C) in model-input space; Captum works on NCHW tensors, so its
output is transposed to NHWC before comparing. gradsight's "trapezoid" weights sum to 1 (1/(n-1), ends halved);
Captum's "riemann_trapezoid" uses 1/n with ends halved (sum 1 - 1/n) on the same points, so ours equals Captum's
times n / (n - 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from method_models import SumOfSquares, conditioned_resnet18, linear_model, nchw, nhwc, normal_inputs, rel_l2
from torch import nn

from gradsight.errors import BadInputError
from gradsight.inputs import prepare_inputs
from gradsight.methods.attribute import attribute
from gradsight.methods.integrated_gradients import RULES, quadrature

RULE_STEPS = [(rule, n) for rule in RULES for n in (2, 5, 16)]


class Power(nn.Module):
    """f(x) = sum x^p: IG with baseline 0 is x^p exactly, its integrand p a^(p-1) x^p a polynomial in a."""

    def __init__(self, p: int):
        super().__init__()
        self.p = p

    def forward(self, x):
        z = (x ** self.p).sum(dim=(1, 2, 3))
        return torch.stack([z, -z], dim=1)


@pytest.mark.parametrize("rule,n", RULE_STEPS)
def test_linear_model_gives_w_times_x_minus_b_for_every_rule(rule, n):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4, 3)).astype(np.float32)
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    b = rng.standard_normal((5, 4, 3)).astype(np.float32)
    net = linear_model(w, c=0.7)
    for baseline, b_arr in (("zeros", 0.0), (b, b)):
        r = attribute(net, x, method="integrated_gradients", target=0, n_steps=n, rule=rule, baseline=baseline)
        np.testing.assert_allclose(r.attribution, w * (x - b_arr), rtol=1e-5, atol=1e-6)
        # Completeness is exact: sum(w (x - b)) = F(x) - F(b), the constant c cancels.
        expected_difference = (w * (x - b_arr)).sum(axis=(1, 2, 3))
        np.testing.assert_allclose(r.per_image["score_difference"], expected_difference, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r.per_image["completeness_gap"], 0.0, atol=1e-4)
        np.testing.assert_allclose(r.maps, (w * (x - b_arr)).sum(axis=-1), rtol=1e-5, atol=1e-5)


def test_sum_of_squares_integrand_is_linear_so_midpoint_trapezoid_and_gauss_are_exact():
    x = normal_inputs(2, 3, seed=1)
    net = SumOfSquares().eval()
    n = 4
    # grad = 2 a x on the path a x, so IG = x * sum_k w_k 2 a_k x = 2 x^2 sum_k w_k a_k.
    exact = x ** 2                                  # 2 x^2 * integral_0^1 a da
    left = 2 * x ** 2 * (0 + 1 + 2 + 3) / 4 / 4     # = x^2 (n - 1) / n
    right = 2 * x ** 2 * (1 + 2 + 3 + 4) / 4 / 4    # = x^2 (n + 1) / n
    expected = {"gausslegendre": exact, "riemann_middle": exact, "trapezoid": exact, "riemann_left": left,
                "riemann_right": right}
    for rule, value in expected.items():
        r = attribute(net, x, method="integrated_gradients", target=0, n_steps=n, rule=rule)
        np.testing.assert_allclose(r.attribution, value, rtol=1e-5, atol=1e-6, err_msg=rule)
    one = attribute(net, x, method="integrated_gradients", target=0, n_steps=1)  # Gauss-Legendre, 1 node
    np.testing.assert_allclose(one.attribution, exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [2, 3, 4, 5, 6])
def test_gauss_legendre_is_exact_up_to_degree_2n_minus_1(p):
    # The integrand p a^(p-1) x^p has degree p - 1: n nodes are exact iff p - 1 <= 2 n - 1.
    z = normal_inputs(1, 2, seed=2)
    x = (np.sign(z) * (np.abs(z) + 0.5)).astype(np.float32)  # away from 0, some negative (model input)
    net = Power(p).eval()
    for n in (1, 2, 3):
        r = attribute(net, x, method="integrated_gradients", target=0, n_steps=n)
        relative = np.abs(r.attribution / x ** p - 1).max()
        if p - 1 <= 2 * n - 1:
            assert relative < 1e-5, (p, n, relative)
        else:
            assert relative > 1e-3, (p, n, relative)


def test_quadrature_weights_sum_to_one_and_match_the_rules_by_hand():
    for rule in RULES:
        for n in (2, 7, 50):
            a, w = quadrature(rule, n)
            assert abs(w.sum() - 1) < 1e-12 and len(a) == len(w) == n and (a >= 0).all() and (a <= 1).all()
    assert quadrature("riemann_left", 4)[0].tolist() == [0, 0.25, 0.5, 0.75]
    assert quadrature("riemann_right", 4)[0].tolist() == [0.25, 0.5, 0.75, 1]
    assert quadrature("riemann_middle", 4)[0].tolist() == [0.125, 0.375, 0.625, 0.875]
    assert quadrature("trapezoid", 5)[1].tolist() == [1 / 8, 1 / 4, 1 / 4, 1 / 4, 1 / 8]
    a, w = quadrature("gausslegendre", 2)  # nodes (1 -+ 1/sqrt(3)) / 2, weights 1/2
    np.testing.assert_allclose(a, [(1 - 3 ** -0.5) / 2, (1 + 3 ** -0.5) / 2], rtol=1e-12)
    np.testing.assert_allclose(w, [0.5, 0.5], rtol=1e-12)


@pytest.fixture(scope="module")
def resnet():
    return conditioned_resnet18()


CAPTUM_RULES = {"gausslegendre": "gausslegendre", "riemann_left": "riemann_left",
                "riemann_right": "riemann_right", "riemann_middle": "riemann_middle",
                "trapezoid": "riemann_trapezoid"}


@pytest.mark.parametrize("rule", RULES)
def test_equals_captum_on_resnet18(resnet, rule):
    x = normal_inputs(2, 64, seed=3)
    base = 0.3 * normal_inputs(1, 64, seed=4)[0]
    n = 8
    ours = attribute(resnet, x, method="integrated_gradients", target=[3, 7], n_steps=n, rule=rule,
                     baseline=base, internal_batch_size=5)
    ig = IntegratedGradients(resnet)
    theirs, delta = ig.attribute(nchw(x), baselines=nchw(base[None]), target=torch.tensor([3, 7]), n_steps=n,
                                 method=CAPTUM_RULES[rule], internal_batch_size=16, return_convergence_delta=True)
    scale = n / (n - 1) if rule == "trapezoid" else 1.0  # Captum's trapezoid weights sum to 1 - 1/n
    theirs = nhwc(theirs) * scale
    assert rel_l2(ours.attribution, theirs) < 1e-4
    if rule == "gausslegendre":  # Captum's delta is the same completeness gap: sum(attr) - (F(x) - F(b))
        np.testing.assert_allclose(ours.per_image["completeness_gap"], delta.numpy(), rtol=1e-3, atol=1e-6)


def test_an_image_alone_equals_it_in_a_mixed_target_batch_and_any_chunking(resnet):
    x = normal_inputs(3, 32, seed=7)
    kw = dict(method="integrated_gradients", n_steps=7)
    alone = attribute(resnet, x[1:2], target=None, internal_batch_size=7, **kw)  # its predicted class
    targets = [2, int(alone.targets[0]), 4]
    batch = attribute(resnet, x, target=[2, None, 4], batch_size=3, internal_batch_size=1, **kw)
    chunks = attribute(resnet, x, target=targets, batch_size=1, internal_batch_size=7, **kw)
    assert batch.targets.tolist() == chunks.targets.tolist() == targets
    # Equal to float32 rounding of different batch compositions.
    top = np.abs(batch.attribution).max()
    np.testing.assert_allclose(batch.attribution[1], alone.attribution[0], rtol=1e-4, atol=1e-4 * top)
    np.testing.assert_allclose(chunks.attribution, batch.attribution, rtol=1e-4, atol=1e-4 * top)
    np.testing.assert_allclose(chunks.per_image["completeness_gap"], batch.per_image["completeness_gap"],
                               atol=1e-5)


@pytest.fixture(scope="module")
def ouzel_ig(embedded, ouzel_path):
    """The default Integrated Gradients (50 Gauss-Legendre nodes, zero baseline) of the photo, computed once."""
    x = prepare_inputs([ouzel_path], embedded.preprocess).arrays
    return x, attribute(embedded, x, method="integrated_gradients")


@pytest.mark.slow
def test_equals_captum_on_the_embedded_model_with_the_photo(embedded, ouzel_ig):
    x, ours = ouzel_ig
    assert ours.targets.tolist() == [20]
    theirs = IntegratedGradients(embedded.module).attribute(nchw(x), baselines=0.0, target=20, n_steps=50,
                                                           method="gausslegendre", internal_batch_size=50)
    # Float32 itself is the limit on this path (it crosses many ReLU6 kinks): Captum in float32 is 2.2e-3 from
    # Captum in float64 (rel. L2), our default (BatchNorm folded, fast=True) 1.3e-3 and our fast=False 5.7e-5
    # from Captum in float32 (measured once; a float64 run takes minutes, so it is not repeated here).
    assert rel_l2(ours.attribution, nhwc(theirs)) < 5e-3


@pytest.mark.slow
def test_completeness_gap_of_the_default_is_small_on_the_embedded_model(ouzel_ig):
    _, r = ouzel_ig
    gap, difference = r.per_image["completeness_gap"][0], r.per_image["score_difference"][0]
    print(f"\nIG default (gausslegendre, 50 steps, zero baseline) on the ouzel photo: F(x) - F(b) = "
          f"{difference:.3f}, gap = {gap:+.3f} ({gap / difference:+.1%})")
    assert difference > 5  # the water-ouzel logit rises from ~0 at the grey baseline to ~10
    # Measured: -0.65 of 10.33 (-6.3%). Most of the score change happens in the first 5% of the path (the
    # integrand peaks near a = 0.026 at ~90x its mean), so every rule needs many steps: see the next test.
    assert abs(gap) / abs(difference) < 0.10


@pytest.mark.slow
@pytest.mark.parametrize("rule,n", [("riemann_left", 10), ("riemann_right", 10), ("trapezoid", 10),
                                    ("gausslegendre", 10)])
def test_ten_steps_are_not_enough_on_the_embedded_model(embedded, ouzel_ig, rule, n):
    x, default = ouzel_ig
    r = attribute(embedded, x, method="integrated_gradients", rule=rule, n_steps=n)
    gap, difference = r.per_image["completeness_gap"][0], r.per_image["score_difference"][0]
    print(f"\nIG {rule}, {n} steps: gap = {gap:+.3f} of {difference:.3f} ({gap / difference:+.1%}); "
          f"default: {default.per_image['completeness_gap'][0] / difference:+.1%}")
    # Measured: -57% .. -93%: a tenth of the way the score changes by 4 logits between two steps.
    assert abs(gap) / abs(difference) > 0.3
    assert abs(gap) > 3 * abs(default.per_image["completeness_gap"][0])


def test_black_and_blur_baselines_are_what_they_say(embedded):
    x = normal_inputs(1, 32, seed=5)
    net = linear_model(np.ones((32, 32, 3), np.float32), 0.0)
    black = attribute(net, x, method="integrated_gradients", target=0, baseline="black",
                      preprocess=embedded.preprocess, n_steps=2)
    # EfficientNet-Lite0's preprocessing is (v / 255 - 0.5) / 0.5: a black photo is -1 in every channel.
    np.testing.assert_allclose(black.attribution, x - (0 / 255 - 0.5) / 0.5, rtol=1e-5, atol=1e-5)
    assert black.options["baseline"] == "black photo, preprocessed"
    from scipy.ndimage import gaussian_filter

    blur = attribute(net, x, method="integrated_gradients", target=0, baseline="blur", blur_sigma=2.0, n_steps=2)
    expected = x - gaussian_filter(x, sigma=(0, 2, 2, 0), mode="reflect")
    np.testing.assert_allclose(blur.attribution, expected, rtol=1e-4, atol=1e-5)


def test_per_image_baselines_follow_their_images_through_batches():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((4, 4, 3)).astype(np.float32)
    x = rng.standard_normal((5, 4, 4, 3)).astype(np.float32)
    b = rng.standard_normal((5, 4, 4, 3)).astype(np.float32)
    r = attribute(linear_model(w, 0.0), x, method="integrated_gradients", target=0, baseline=b, batch_size=2,
                  n_steps=3, internal_batch_size=4)
    np.testing.assert_allclose(r.attribution, w * (x - b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad,match", [({"n_steps": 0}, "n_steps"), ({"n_steps": 2.5}, "n_steps"),
                                       ({"rule": "simpson"}, "rule"), ({"rule": "trapezoid", "n_steps": 1},
                                                                       "at least 2"),
                                       ({"internal_batch_size": 0}, "internal_batch_size"),
                                       ({"baseline": "grey"}, "baseline"),
                                       ({"baseline": np.zeros((3, 3, 3), np.float32)}, "shape"),
                                       ({"baseline": "blur", "blur_sigma": 0}, "blur_sigma")])
def test_bad_options_are_refused(cnn, bad, match):
    with pytest.raises(BadInputError, match=match):
        attribute(cnn, normal_inputs(1, 8), method="integrated_gradients", **bad)


def test_even_chunks_cover_every_row_once_in_the_fewest_passes_of_near_equal_size():
    from gradsight.methods.job import even_chunks

    for count in range(0, 90):
        for most in range(1, 20):
            chunks = even_chunks(count, most)
            sizes = [c.stop - c.start for c in chunks]
            assert [i for c in chunks for i in range(c.start, c.stop)] == list(range(count))
            assert len(chunks) == -(-count // most) and all(0 < s <= most for s in sizes)
            assert not sizes or max(sizes) - min(sizes) <= 1
