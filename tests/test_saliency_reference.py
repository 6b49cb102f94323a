"""Saliency against oracles nobody here wrote: Captum's Saliency, and central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from testkit import small_cnn

import gradsight
from gradsight.adapters.torch.adapter import TorchAdapter


def captum_map(module, x_nchw: torch.Tensor, target) -> np.ndarray:
    """Captum's per-channel |grad|, reduced by max over channels as gradsight defines the map."""
    attr = Saliency(module).attribute(x_nchw.clone(), target=target, abs=True)
    return attr.amax(dim=1).detach().numpy()


def nchw(result_or_array) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(result_or_array)).permute(0, 3, 1, 2)


def test_plain_path_equals_captum_on_embedded_model(embedded, ouzel_path):
    # Two different inputs: the photo and its mirror image, explained for the predicted class.
    from gradsight.inputs import prepare_inputs

    arrays = prepare_inputs([ouzel_path], embedded.preprocess).arrays
    batch = np.concatenate([arrays, arrays[:, :, ::-1]])
    ours = gradsight.saliency(embedded, batch, fast=False)
    ref = captum_map(embedded.module, nchw(batch), torch.from_numpy(ours.predictions))
    assert ours.predictions.tolist() == [20, 20]
    np.testing.assert_allclose(ours.saliency, ref, rtol=1e-6, atol=1e-6 * ref.max())


def test_plain_path_equals_captum_for_given_target_and_probability_score(cnn, rng):
    x = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
    ours = gradsight.saliency(cnn, x, target=[1, 4, 0], score="prob", fast=False)
    probs = torch.nn.Sequential(cnn, torch.nn.Softmax(dim=1))
    ref = captum_map(probs, nchw(x), torch.tensor([1, 4, 0]))
    assert ours.targets.tolist() == [1, 4, 0]
    np.testing.assert_allclose(ours.saliency, ref, rtol=1e-6, atol=1e-6 * ref.max())


def test_fast_path_within_1e_3_of_plain_on_embedded_model(embedded, ouzel_path):
    from gradsight.inputs import prepare_inputs

    photo = prepare_inputs([ouzel_path], embedded.preprocess).arrays[0]
    # The photo, mirrored, and mirrored + shifted: with BatchNorm folded in float32 the last one was 6e-3 off.
    batch = np.stack([photo, photo[:, ::-1], np.roll(photo[:, ::-1], 56, axis=1)])
    plain = gradsight.saliency(embedded, batch, fast=False)
    fast = gradsight.saliency(embedded, batch, fast=True)
    for i in range(len(batch)):
        relative_l2 = np.linalg.norm(fast.saliency[i] - plain.saliency[i]) / np.linalg.norm(plain.saliency[i])
        assert relative_l2 < 1e-3, (i, relative_l2)
        grad_l2 = np.linalg.norm(fast.gradient[i] - plain.gradient[i]) / np.linalg.norm(plain.gradient[i])
        assert grad_l2 < 1e-3, (i, grad_l2)
    np.testing.assert_allclose(fast.logits, plain.logits, rtol=1e-4, atol=1e-4)


def test_fast_path_really_folds_every_batchnorm_of_the_embedded_model(embedded):
    from gradsight.adapters.torch.folding import fold_batchnorm

    bns = [m for m in embedded.module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    folded = fold_batchnorm(embedded.module.eval(), torch.zeros(1, 3, 224, 224))
    assert len(bns) == 49
    assert not [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not p.requires_grad for p in folded.parameters())


def test_fast_path_equals_plain_on_small_cnn(cnn, rng):
    x = rng.standard_normal((4, 40, 40, 3)).astype(np.float32)
    plain = gradsight.saliency(cnn, x, fast=False)
    fast = gradsight.saliency(cnn, x, fast=True)
    np.testing.assert_allclose(fast.gradient, plain.gradient, rtol=1e-4, atol=1e-5 * np.abs(plain.gradient).max())


def test_folding_is_refused_when_an_inplace_op_sits_between_conv_and_bn(rng):
    torch.manual_seed(0)

    class ConvReluBn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))

        def forward(self, x):
            y = self.conv(x)
            y.relu_()  # same tensor object reaches BN, but it is no longer the conv's output
            return self.head(self.bn(y))

    net = ConvReluBn().eval()
    net.bn.running_mean.fill_(0.3)
    from gradsight.adapters.torch.folding import fold_batchnorm

    assert fold_batchnorm(net, torch.ones(1, 3, 16, 16)) is None
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(gradsight.saliency(net, x).gradient, gradsight.saliency(net, x, fast=False).gradient)


def test_fast_path_cache_follows_weight_changes(rng):
    net = small_cnn(seed=3)
    x = rng.standard_normal((1, 24, 24, 3)).astype(np.float32)
    before = gradsight.saliency(net, x, target=0).gradient
    with torch.no_grad():
        net[4].running_var.mul_(4.0)  # in place: the folded copy must be rebuilt
    after_fast = gradsight.saliency(net, x, target=0).gradient
    after_plain = gradsight.saliency(net, x, target=0, fast=False).gradient
    assert not np.allclose(before, after_plain)
    np.testing.assert_allclose(after_fast, after_plain, rtol=1e-4, atol=1e-6)


def test_within_one_call_the_folded_copy_is_checked_once_and_between_calls_every_change_is_seen(rng,
                                                                                               monkeypatch):
    from gradsight.adapters.torch import folding

    net = small_cnn(seed=4)
    x = rng.standard_normal((5, 24, 24, 3)).astype(np.float32)
    checks = []
    real = folding._checked_folded_copy
    monkeypatch.setattr(folding, "_checked_folded_copy", lambda *a: checks.append(1) or real(*a))
    first = gradsight.attribute(net, x, method="smoothgrad", target=0, n_samples=6, internal_batch_size=4)
    assert len(checks) == 1  # 30 noisy copies in 8 passes, one check
    with torch.no_grad():
        net[4].running_var.mul_(4.0)  # changed between two calls: the next call must see it
    second = gradsight.attribute(net, x, method="smoothgrad", target=0, n_samples=6, internal_batch_size=4)
    plain = gradsight.attribute(net, x, method="smoothgrad", target=0, n_samples=6, internal_batch_size=4,
                                fast=False)
    assert len(checks) == 2
    assert not np.allclose(first.attribution, plain.attribution)
    np.testing.assert_allclose(second.attribution, plain.attribution, rtol=1e-4, atol=1e-5)
    with folding.unchanged_during(net):
        with torch.no_grad():
            net[4].running_var.mul_(0.25)  # a change before the block's first check is seen
        inside = gradsight.saliency(net, x, target=0).gradient
    np.testing.assert_allclose(inside, gradsight.saliency(net, x, target=0, fast=False).gradient, rtol=1e-4,
                               atol=1e-6)


class SmoothNet(torch.nn.Module):
    """A small smooth classifier in float64, so central differences are accurate."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.conv1 = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6 * 4 * 4, 4)

    def forward(self, x):
        h = torch.tanh(self.conv1(x))
        h = torch.nn.functional.softplus(self.conv2(h))
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("score", ["logit", "prob", "logprob"])
def test_gradient_matches_central_finite_differences(score):
    net = SmoothNet().double().eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 8, 3))
    target = 2
    out = TorchAdapter().score_gradient(net, x, [target], score, fast=False)

    def f(arr):
        with torch.no_grad():
            z = net(torch.from_numpy(arr).permute(0, 3, 1, 2))
        z = {"logit": z, "prob": z.softmax(1), "logprob": z.log_softmax(1)}[score]
        return float(z[0, target])

    eps = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (f(up) - f(down)) / (2 * eps)
    np.testing.assert_allclose(out.gradient, numeric, rtol=1e-6, atol=1e-8)
    assert out.targets.tolist() == [target]


def test_saliency_is_max_over_channels_of_absolute_gradient(cnn, rng):
    x = rng.standard_normal((2, 20, 20, 3)).astype(np.float32)
    result = gradsight.saliency(cnn, x)
    assert np.array_equal(result.saliency, np.abs(result.gradient).max(axis=-1))
    assert result.targets.tolist() == result.logits.argmax(1).tolist()


def test_saliency_concentrates_on_the_bird_in_the_real_photo(embedded, ouzel_path):
    result = gradsight.saliency(embedded, ouzel_path)
    on_photo = result.on_original(0)
    assert on_photo.shape == (348, 500)
    # The bird occupies x in [110, 350], y in [65, 235] of the 500x348 photo (shared/data/README.md).
    bird = np.zeros_like(on_photo, dtype=bool)
    bird[65:236, 110:351] = True
    seen = on_photo > 0
    mass_share = on_photo[bird].sum() / on_photo.sum()
    area_share = (bird & seen).sum() / seen.sum()
    assert mass_share > 1.3 * area_share, (mass_share, area_share)


def test_batched_call_equals_one_image_at_a_time(cnn, rng):
    x = rng.standard_normal((5, 20, 20, 3)).astype(np.float32)
    together = gradsight.saliency(cnn, x, batch_size=2)
    alone = [gradsight.saliency(cnn, x[i]).saliency[0] for i in range(5)]
    np.testing.assert_allclose(together.saliency, np.stack(alone), rtol=1e-5, atol=1e-7)


def test_softmax_ended_model_still_gives_the_logit():
    from gradsight.adapters.torch.zoo import seed_cnn

    net = seed_cnn("torch")  # its head ends in nn.Softmax
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    result = gradsight.saliency(net, x, target=[3, 7], fast=False)
    logits = net.head[:-1](net[:-1](torch.from_numpy(x).permute(0, 3, 1, 2)))
    np.testing.assert_allclose(result.logits, logits.detach().numpy(), rtol=1e-5, atol=1e-7)
    no_softmax = torch.nn.Sequential(*list(net.children())[:-1], net.head[:-1])
    ref = captum_map(no_softmax, nchw(x), torch.tensor([3, 7]))
    np.testing.assert_allclose(result.saliency, ref, rtol=1e-6, atol=1e-6 * ref.max())
    assert np.allclose(result.probabilities.sum(axis=1), 1.0)


def test_path_pil_image_and_uint8_array_give_the_same_map(embedded, ouzel_path):
    from PIL import Image

    photo = Image.open(ouzel_path).convert("RGB")
    result = gradsight.saliency(embedded, [ouzel_path, photo, np.asarray(photo)], fast=False)
    assert result.sources[1:] == ("<PIL image>", "<array>")
    np.testing.assert_array_equal(result.saliency[0], result.saliency[1])
    np.testing.assert_array_equal(result.saliency[0], result.saliency[2])
