"""SmoothGrad, SmoothGrad^2 and VarGrad: closed forms, noise statistics, and Captum's NoiseTunnel on the same noise.

Conventions: gradsight's sigma is relative by default (noise_level x (max - min) of each input, as Smilkov et
al. and PAIR), Captum's `stdevs` absolute; our signed "mean" over `gradient` is Captum's NoiseTunnel
"smoothgrad" over Saliency(abs=False), "square" its "smoothgrad_sq", "var" its "vargrad" (both biased: divide by
n_samples). Captum draws its noise with torch.normal and ours with NumPy, so the Captum comparison hands
Captum our noise (sample s of every input: sigma_i x the standard normals of the stream (seed, s), the
documented contract of gradsight.methods.smoothgrad), which makes the comparison exact rather than statistical.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel, Saliency
from method_models import SumOfSquares, conditioned_resnet18, linear_model, nchw, nhwc, normal_inputs, rel_l2

from gradsight.errors import BadInputError
from gradsight.inputs import prepare_inputs
from gradsight.methods.attribute import attribute


def our_noise(seed: int, sample: int, shape) -> np.ndarray:
    return np.random.default_rng([seed, sample]).standard_normal(shape, dtype=np.float32)


def test_linear_model_mean_is_w_square_is_w2_and_vargrad_is_zero():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5, 3)).astype(np.float32)
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    net = linear_model(w, 1.5)
    kw = dict(method="smoothgrad", target=0, n_samples=7, noise_level=0.2)
    mean = attribute(net, x, variant="mean", **kw)
    np.testing.assert_allclose(mean.attribution, np.broadcast_to(w, x.shape), rtol=1e-6)  # the gradient is w
    np.testing.assert_allclose(mean.maps, np.abs(w).max(axis=-1)[None].repeat(2, 0), rtol=1e-6)
    square = attribute(net, x, variant="square", **kw)
    np.testing.assert_allclose(square.attribution, np.broadcast_to(w * w, x.shape), rtol=1e-6)
    var = attribute(net, x, variant="var", **kw)
    assert np.abs(var.attribution).max() <= 1e-6 * (w * w).max()
    assert var.options["var_estimator"].startswith("biased")


def test_wraps_other_pixel_methods_input_x_gradient_by_hand():
    # Input x gradient of w.x at x + sigma e_s is w (x + sigma e_s); the mean over s is w (x + sigma mean_s e_s).
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 4, 3)).astype(np.float32)
    x = rng.standard_normal((1, 4, 4, 3)).astype(np.float32)
    r = attribute(linear_model(w, 0.0), x, method="smoothgrad", base_method="input_x_gradient", target=0,
                  n_samples=5, stdev=0.3, seed=4, internal_batch_size=2)
    noise_mean = np.mean([our_noise(4, s, x.shape[1:]) for s in range(5)], axis=0)
    np.testing.assert_allclose(r.attribution, w * (x + 0.3 * noise_mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.maps, r.attribution.sum(axis=-1), rtol=1e-6)  # shown as the wrapped method
    assert r.options["base_method"] == "input_x_gradient" and r.options["sigma"] == [0.3]


def test_smoothgrad_of_integrated_gradients_with_one_baseline_per_image():
    # IG of a linear model is w (x' - b) for any rule; with zero noise the mean is w (x - b_i), image by image,
    # also when noisy copies of different images share an inner batch.
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 4, 3)).astype(np.float32)
    x = rng.standard_normal((3, 4, 4, 3)).astype(np.float32)
    b = rng.standard_normal((3, 4, 4, 3)).astype(np.float32)
    r = attribute(linear_model(w, 0.0), x, method="smoothgrad", base_method="integrated_gradients",
                  base_options={"baseline": b, "n_steps": 2}, target=0, n_samples=4, stdev=0.0,
                  internal_batch_size=5)
    np.testing.assert_allclose(r.attribution, w * (x - b), rtol=1e-5, atol=1e-6)
    assert r.options["base_options"]["baseline"] == "array of shape (3, 4, 4, 3)"


def test_per_image_baselines_inside_base_options_follow_their_images_through_batches():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((4, 4, 3)).astype(np.float32)
    x = rng.standard_normal((3, 4, 4, 3)).astype(np.float32)
    b = rng.standard_normal((3, 4, 4, 3)).astype(np.float32)
    r = attribute(linear_model(w, 0.0), x, method="smoothgrad", base_method="integrated_gradients",
                  base_options={"baseline": b, "n_steps": 2}, target=0, n_samples=2, stdev=0.0, batch_size=2)
    np.testing.assert_allclose(r.attribution, w * (x - b), rtol=1e-5, atol=1e-6)


def vargrad_of_sum_of_squares(x, **options):
    r = attribute(SumOfSquares().eval(), x, method="smoothgrad", variant="var", target=0, n_samples=300,
                  **options)
    return r.attribution, r.options["sigma"]


def test_vargrad_of_sum_of_squares_is_4_sigma2_relative_and_absolute_told_apart():
    # The gradient of sum x^2 at x + e is 2 x + 2 e: its variance over the noise is 4 sigma^2 per element, and
    # the biased estimator's expectation is 4 sigma^2 (n - 1) / n. 300 samples x 48 elements: ~1.2% spread.
    x = normal_inputs(1, 4, seed=3)
    x = x / (x.max() - x.min()) * 10  # (max - min) = 10: relative 0.1 gives sigma 1.0, absolute 0.5 stays 0.5
    relative, sigma_rel = vargrad_of_sum_of_squares(x, noise_level=0.1)
    absolute, sigma_abs = vargrad_of_sum_of_squares(x, stdev=0.5)
    assert sigma_rel == pytest.approx([0.1 * 10]) and sigma_abs == [0.5]
    bias = (300 - 1) / 300
    assert relative.mean() / (4 * 1.0 ** 2 * bias) == pytest.approx(1, abs=0.05)
    assert absolute.mean() / (4 * 0.5 ** 2 * bias) == pytest.approx(1, abs=0.05)
    # ... and the default noise_level 0.15 of the same input: sigma = 1.5, VarGrad = 9.
    default, sigma = vargrad_of_sum_of_squares(x)
    assert sigma == pytest.approx([1.5]) and default.mean() / (4 * 1.5 ** 2 * bias) == pytest.approx(1, abs=0.05)


def test_seed_makes_it_reproducible_and_other_seeds_differ(cnn):
    x = normal_inputs(1, 16, seed=4)
    a = attribute(cnn, x, method="smoothgrad", n_samples=4, seed=3).attribution
    b = attribute(cnn, x, method="smoothgrad", n_samples=4, seed=3).attribution
    c = attribute(cnn, x, method="smoothgrad", n_samples=4, seed=4).attribution
    assert np.array_equal(a, b) and not np.allclose(a, c)


@pytest.fixture(scope="module")
def resnet():
    return conditioned_resnet18()


@pytest.mark.parametrize("variant,nt_type", [("mean", "smoothgrad"), ("square", "smoothgrad_sq"),
                                             ("var", "vargrad")])
def test_equals_captum_noise_tunnel_given_the_same_noise(resnet, monkeypatch, variant, nt_type):
    x = normal_inputs(2, 48, seed=5)
    n, level, seed = 6, 0.15, 11
    ours = attribute(resnet, x, method="smoothgrad", variant=variant, target=[1, 8], n_samples=n,
                     noise_level=level, seed=seed, internal_batch_size=5)
    sigmas = level * (x.reshape(2, -1).max(1) - x.reshape(2, -1).min(1))
    assert ours.options["sigma"] == pytest.approx(sigmas.tolist())
    # Captum's layout: inputs.repeat_interleave(n) -> rows (image 0: samples 0..n-1, image 1: ...), NCHW.
    noise = np.stack([sigmas[i] * our_noise(seed, s, x.shape[1:]) for i in range(2) for s in range(n)])
    real_normal = torch.normal
    monkeypatch.setattr(torch, "normal", lambda mean, std, *a, **k: nchw(noise.astype(np.float32))
                        if tuple(std.shape) == (2 * n, 3, 48, 48) else real_normal(mean, std, *a, **k))
    theirs = NoiseTunnel(Saliency(resnet)).attribute(nchw(x), nt_type=nt_type, nt_samples=n, stdevs=1.0,
                                                     target=torch.tensor([1, 8]), abs=False)
    # Float32 gradients; VarGrad is a difference of two means (E[g^2] - E[g]^2) and loses a digit more.
    assert rel_l2(ours.attribution, nhwc(theirs)) < (1e-4 if variant != "var" else 1e-3)


@pytest.mark.slow
def test_equals_captum_noise_tunnel_on_the_embedded_model_with_the_photo(embedded, ouzel_path, monkeypatch):
    # In float64 (a copy of the model): in float32, one of these four noisy copies has a ReLU6 input within
    # rounding of a bound, and channels-last and NCHW convolutions round it to different sides (that copy's
    # gradients differ by 6e-4 relative L2; the other three by 7e-7).
    x = prepare_inputs([ouzel_path], embedded.preprocess).arrays
    model = copy.deepcopy(embedded.module).double()
    n, seed = 4, 5
    ours = attribute(model, x, method="smoothgrad", n_samples=n, seed=seed, target=20)
    sigma = np.float32(0.15 * float(x.max() - x.min()))  # the default: relative to the photo's range
    assert ours.options["sigma"] == pytest.approx([sigma])
    noisy = np.stack([x[0] + our_noise(seed, s, x.shape[1:]) * sigma for s in range(n)])  # float32, as ours
    noise = nchw(noisy.astype(np.float64) - x.astype(np.float64))  # exact: x + noise is our noisy input
    real_normal = torch.normal
    monkeypatch.setattr(torch, "normal", lambda mean, std, *a, **k: noise
                        if tuple(std.shape) == (n, 3, 224, 224) else real_normal(mean, std, *a, **k))
    theirs = NoiseTunnel(Saliency(model)).attribute(nchw(x).double(), nt_type="smoothgrad", nt_samples=n,
                                                    stdevs=1.0, target=20, abs=False)
    assert rel_l2(ours.attribution, nhwc(theirs)) < 1e-6  # float32 output of float64 sums; BatchNorm folded


def test_an_image_alone_equals_it_in_a_mixed_target_batch_and_any_chunking(resnet):
    x = normal_inputs(3, 32, seed=6)
    kw = dict(method="smoothgrad", n_samples=6, seed=2)
    alone = attribute(resnet, x[1:2], target=7, internal_batch_size=7, **kw)
    batch = attribute(resnet, x, target=[2, 7, 4], batch_size=3, internal_batch_size=1, **kw)
    chunks = attribute(resnet, x, target=[2, 7, 4], batch_size=1, internal_batch_size=7, **kw)
    # Equal to float32 rounding of different batch compositions (~1e-5 of the largest value).
    np.testing.assert_allclose(batch.attribution[1], alone.attribution[0], rtol=1e-4,
                               atol=1e-4 * np.abs(alone.attribution).max())
    np.testing.assert_allclose(chunks.attribution, batch.attribution, rtol=1e-4,
                               atol=1e-4 * np.abs(batch.attribution).max())
    assert batch.options["sigma"] == pytest.approx(chunks.options["sigma"])


@pytest.mark.parametrize("bad,match", [({"noise_level": -0.1}, "noise_level"), ({"stdev": -1.0}, "stdev"),
                                       ({"noise_level": float("nan")}, "noise_level"),
                                       ({"stdev": float("inf")}, "stdev"), ({"variant": "median"}, "variant"),
                                       ({"n_samples": 0}, "n_samples"), ({"internal_batch_size": 0},
                                                                         "internal_batch_size"),
                                       ({"base_method": "grad_cam"}, "pixel method"),
                                       ({"base_method": "smoothgrad"}, "pixel method"),
                                       ({"base_options": {"n_steps": 3}}, "n_steps"),
                                       ({"base_options": [1]}, "base_options"), ({"seed": -1}, "seed"),
                                       ({"base_method": "integrated_gradients", "base_options": {
                                           "baseline": np.zeros((2, 8, 8, 3), np.float32)}}, "one entry per input")])
def test_bad_options_are_refused(cnn, bad, match):
    with pytest.raises(BadInputError, match=match):
        attribute(cnn, normal_inputs(1, 8), method="smoothgrad", **{"n_samples": 2, **bad})


def test_numpy_numbers_are_accepted_as_options(cnn):
    x = normal_inputs(1, 8)
    a = attribute(cnn, x, method="smoothgrad", n_samples=np.int64(3), noise_level=np.float32(0.25))
    b = attribute(cnn, x, method="smoothgrad", n_samples=3, noise_level=0.25)
    np.testing.assert_allclose(a.attribution, b.attribution, rtol=1e-6)
