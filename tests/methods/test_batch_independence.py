"""Every registered method gives an image the same map whatever else is in its batch: alone, inside a batch
whose images have other targets, and in any chunking of images (``batch_size``) and of its own passes
(``internal_batch_size``, where the method has one). The oracle is the method itself on the image alone; the
methods with their own closed forms and references are tested in their own files, this one covers them all.

In float64: in float32 a batch of one and a batch of eight may round differently, and where a ReLU input sits
within rounding of zero that moves a map by more than rounding (SmoothGrad on image 1 here: 8e-4 relative L2
from the float64 map at internal_batch_size=1, 9e-5 at 8; float64 gives the same map at both)."""

from __future__ import annotations

import numpy as np
import pytest
from method_models import conditioned_resnet18, normal_inputs

import gradsight
from gradsight.methods.attribute import attribute

# Small settings so that all eleven run in seconds on a 64-pixel ResNet-18 (layer4 is 2 x 2 there).
SMALL = {"smoothgrad": {"n_samples": 4, "seed": 3}, "integrated_gradients": {"n_steps": 8},
         "occlusion": {"window": 16, "stride": 8}, "score_cam": {"layer": "layer2"}}  # 128 maps, not 512
METHODS = sorted(m["name"] for m in gradsight.list_methods() if "torch" in m["frameworks"])


@pytest.fixture(scope="module")
def resnet():
    return conditioned_resnet18().double()


def _takes(method: str, option: str) -> bool:
    return any(m["name"] == method and option in m["options"] for m in gradsight.list_methods())


def _close(got: np.ndarray, expected: np.ndarray) -> None:
    # Float64 rounding of different batch compositions.
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9 * max(np.abs(expected).max(), 1e-300))


@pytest.mark.parametrize("method", METHODS)
def test_an_image_alone_equals_it_in_a_mixed_target_batch_and_any_chunking(resnet, method):
    x = normal_inputs(3, 64, seed=11)
    options = SMALL.get(method, {})
    alone = attribute(resnet, x[1:2], method=method, target=7, **options)
    batch = attribute(resnet, x, method=method, target=[2, 7, 4], batch_size=3, **options)
    assert list(batch.targets) == [2, 7, 4]
    _close(batch.maps[1], alone.maps[0])
    if alone.attribution is not None:
        _close(batch.attribution[1], alone.attribution[0])
    if alone.layer_maps is not None:
        _close(batch.layer_maps[1], alone.layer_maps[0])
    # Another target gives another map of the same image: the comparison above would see a target mix-up.
    other_target = attribute(resnet, x[1:2], method=method, target=2, **options)
    assert not np.allclose(other_target.maps[0], alone.maps[0])
    one_by_one = attribute(resnet, x, method=method, target=[2, 7, 4], batch_size=1, **options)
    _close(one_by_one.maps, batch.maps)
    if _takes(method, "internal_batch_size"):
        smallest = attribute(resnet, x, method=method, target=[2, 7, 4], internal_batch_size=1, **options)
        _close(smallest.maps, batch.maps)
