"""Occlusion: the mean score drop over the windows covering a pixel, by hand on a linear model and vs Captum.

Conventions: Captum's Occlusion returns one value per channel; with a window spanning all channels
(sliding_window_shapes=(C, k, k), strides=(C, s, s)) every channel holds the same value, and ours is that value.
Both fill the window with a constant in model-input space (baselines=0 <-> fill=0) and average the drop over
the windows covering each pixel. Where windows do not tile the input, Captum cuts its last window at the border;
gradsight adds a last full window flush with the border instead, so the two agree on tiling sizes only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import Occlusion
from method_models import conditioned_resnet18, linear_model, nchw, normal_inputs, rel_l2

from gradsight.errors import BadInputError
from gradsight.inputs import prepare_inputs
from gradsight.methods.attribute import attribute


def linear_occlusion(w, x, fill, window, starts):
    """The closed form on f = w.x + c: a window's drop is sum over it of w (x - fill); mean per pixel."""
    total, count = np.zeros(x.shape[:2]), np.zeros(x.shape[:2])
    for r in starts:
        for c in starts:
            box = (slice(r, r + window), slice(c, c + window))
            total[box] += (w[box] * (x[box] - fill)).sum()
            count[box] += 1
    return total / count


def test_linear_model_closed_form_on_tiling_windows():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 12, 3)).astype(np.float32)
    x = rng.standard_normal((2, 12, 12, 3)).astype(np.float32)
    r = attribute(linear_model(w, 0.3), x, method="occlusion", target=0, window=4, stride=2, fill=0.5)
    for i in range(2):
        expected = linear_occlusion(w, x[i], 0.5, 4, starts=[0, 2, 4, 6, 8])  # (12 - 4) / 2 + 1 windows a side
        np.testing.assert_allclose(r.maps[i], expected, rtol=1e-4, atol=1e-5)
    assert r.options["windows_per_image"] == 25


def test_windows_spread_over_several_predict_calls_give_the_closed_form(monkeypatch):
    import gradsight.methods.job as job

    calls = []
    monkeypatch.setattr(job, "CALL_IMAGES", 8)  # 25 windows, batches of 3 -> calls of 9, 9 and 7 copies
    rng = np.random.default_rng(1)
    w = rng.standard_normal((12, 12, 3)).astype(np.float32)
    x = rng.standard_normal((1, 12, 12, 3)).astype(np.float32)
    model = linear_model(w, -0.2)
    from gradsight.adapters.torch.adapter import TorchAdapter

    real = TorchAdapter.predict
    monkeypatch.setattr(TorchAdapter, "predict", lambda self, *a, **k: calls.append(len(a[1])) or real(self, *a, **k))
    r = attribute(model, x, method="occlusion", target=0, window=4, stride=2, fill=0.5, internal_batch_size=3)
    np.testing.assert_allclose(r.maps[0], linear_occlusion(w, x[0], 0.5, 4, starts=[0, 2, 4, 6, 8]),
                               rtol=1e-4, atol=1e-5)
    assert [size for size in calls if size > 1] == [9, 9, 7], calls  # the others: the unoccluded image


def test_windows_that_do_not_tile_end_with_a_full_window_flush_with_the_border():
    # 10 pixels, windows of 4 every 4: starts 0 and 4 leave pixels 8 and 9 uncovered; a last window at
    # 10 - 4 = 6 covers them (before the fix they got 0: no attribution at all, silently).
    rng = np.random.default_rng(1)
    w = rng.standard_normal((10, 10, 3)).astype(np.float32)
    x = rng.standard_normal((1, 10, 10, 3)).astype(np.float32)
    r = attribute(linear_model(w, 0.0), x, method="occlusion", target=0, window=4, stride=4)
    expected = linear_occlusion(w, x[0], 0.0, 4, starts=[0, 4, 6])
    np.testing.assert_allclose(r.maps[0], expected, rtol=1e-4, atol=1e-5)
    assert (np.abs(r.maps[0, 8:, :]) > 0).all() and r.options["windows_per_image"] == 9


@pytest.fixture(scope="module")
def resnet():
    return conditioned_resnet18()


def test_equals_captum_occlusion_on_resnet18(resnet):
    x = normal_inputs(2, 64, seed=2)
    ours = attribute(resnet, x, method="occlusion", target=[3, 5], window=16, stride=8, fill=0.0)
    theirs = Occlusion(resnet).attribute(nchw(x), sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                         baselines=0, target=torch.tensor([3, 5]), perturbations_per_eval=16)
    theirs = theirs.numpy()
    assert np.array_equal(theirs[:, 0], theirs[:, 2])  # one value for all channels
    # Score drops are differences of logits of size ~0.2 taken in float32: agreement to ~1e-5 relative.
    assert rel_l2(ours.maps, theirs[:, 0]) < 1e-4


@pytest.mark.slow
def test_equals_captum_occlusion_on_the_embedded_model_with_the_photo(embedded, ouzel_path):
    x = prepare_inputs([ouzel_path], embedded.preprocess).arrays
    ours = attribute(embedded, ouzel_path, method="occlusion", window=56, stride=28)
    assert ours.targets.tolist() == [20] and ours.options["fill"] == 0.0
    theirs = Occlusion(embedded.module).attribute(nchw(x), sliding_window_shapes=(3, 56, 56), strides=(3, 28, 28),
                                                  baselines=0, target=20, perturbations_per_eval=8).numpy()
    assert rel_l2(ours.maps, theirs[:, 0]) < 1e-4  # the incremental passes on the folded copy, Captum's plain


def test_an_image_alone_equals_it_in_a_mixed_target_batch_and_any_chunking(resnet):
    x = normal_inputs(3, 32, seed=3)
    alone = attribute(resnet, x[1:2], method="occlusion", target=7, window=8, stride=8, internal_batch_size=7)
    batch = attribute(resnet, x, method="occlusion", target=[2, 7, 4], window=8, stride=8, batch_size=3,
                      internal_batch_size=1)
    chunks = attribute(resnet, x, method="occlusion", target=[2, 7, 4], window=8, stride=8, batch_size=1,
                       internal_batch_size=7)
    np.testing.assert_allclose(batch.maps[1], alone.maps[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(chunks.maps, batch.maps, rtol=1e-4, atol=1e-6)
    assert batch.targets.tolist() == [2, 7, 4]


@pytest.mark.parametrize("bad,match", [({"window": 0}, "window"), ({"window": 40}, "at most"),
                                       ({"stride": 0}, "stride"), ({"window": 2.5}, "window"),
                                       ({"fill": float("nan")}, "fill"), ({"fill": "grey"}, "fill"),
                                       ({"internal_batch_size": 0}, "internal_batch_size")])
def test_bad_options_are_refused(cnn, bad, match):
    with pytest.raises(BadInputError, match=match):
        attribute(cnn, normal_inputs(1, 32), method="occlusion", **bad)
