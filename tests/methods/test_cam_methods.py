"""Grad-CAM, Grad-CAM++ and LayerCAM: CAM (Zhou 2016) by hand, Captum's LayerGradCam and pytorch-grad-cam.

Conventions: our ``layer_maps`` are the raw maps at the layer's resolution after the paper's ReLU; ``maps``
are those upsampled bilinearly with half-pixel centres (torch's align_corners=False, what Captum's
LayerAttribution.interpolate(mode="bilinear") does). Captum's LayerGradCam runs with relu_attributions=True
(its default is no ReLU). pytorch-grad-cam applies the ReLU, then scales each map to [0, 1] (min to max, +1e-7)
and resizes it with cv2 (bilinear, half-pixel centres): we compare its raw layer maps (get_cam_image on the
activations and gradients it captured) with ours, and its final output with ours scaled the same way.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from method_models import conditioned_resnet18, nchw, normal_inputs
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import gradsight
from gradsight.inputs import prepare_inputs
from gradsight.methods.attribute import attribute


def cam_net(seed: int = 0) -> nn.Module:
    """conv (3x3, stride 3) -> ReLU -> global average pool -> linear: the architecture where Grad-CAM is CAM."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, stride=3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 4)).eval()


def test_grad_cam_is_cam_over_h_times_w_and_the_other_two_by_hand():
    net = cam_net()
    x = normal_inputs(2, 20, seed=1)  # 20 px, 3x3 stride 3: a 6 x 6 layer, upsampled by 20 / 6
    with torch.no_grad():
        a = F.relu(F.conv2d(nchw(x), net[0].weight, net[0].bias, stride=3)).numpy()  # (N, c, h, w)
    fc = net[4].weight.detach().numpy()  # (classes, c)
    h, w = a.shape[2:]
    targets = [1, 3]
    results = {m: attribute(net, x, method=m, target=targets) for m in ("grad_cam", "grad_cam_pp", "layer_cam")}
    for i, k in enumerate(targets):
        cam = np.einsum("c,chw->hw", fc[k], a[i])          # Zhou et al. 2016: sum_c w_kc A_c
        # d logit_k / d A_c(a, b) = w_kc / (h w) at every position, so Grad-CAM's weight is its mean w_kc / (h w).
        np.testing.assert_allclose(results["grad_cam"].layer_maps[i], np.maximum(cam / (h * w), 0), rtol=1e-5,
                                   atol=1e-7)
        g = fc[k] / (h * w)
        s = a[i].sum(axis=(1, 2))                          # sum over positions of A_c
        alpha = np.divide(g ** 2, 2 * g ** 2 + s * g ** 3, out=np.zeros_like(g), where=g != 0)
        weights = h * w * alpha * np.maximum(g, 0)          # sum over the (equal) positions
        np.testing.assert_allclose(results["grad_cam_pp"].layer_maps[i],
                                   np.maximum(np.einsum("c,chw->hw", weights, a[i]), 0), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(results["layer_cam"].layer_maps[i],
                                   np.maximum(np.einsum("c,chw->hw", np.maximum(g, 0), a[i]), 0), rtol=1e-5,
                                   atol=1e-7)
    for r in results.values():
        assert r.options["layer"] == "1"  # the default: the last spatial layer, the ReLU that feeds the pool
        upsampled = F.interpolate(torch.from_numpy(r.layer_maps)[:, None], size=(20, 20), mode="bilinear",
                                  align_corners=False)[:, 0].numpy()
        np.testing.assert_allclose(r.maps, upsampled, rtol=1e-5, atol=1e-6 * r.layer_maps.max())


@pytest.fixture(scope="module")
def resnet():
    return conditioned_resnet18()


def test_grad_cam_equals_captum_layer_grad_cam_on_resnet18(resnet):
    x = normal_inputs(3, 112, seed=2)
    targets = [3, 5, 9]
    ours = attribute(resnet, x, method="grad_cam", layer="layer4", target=targets)
    assert ours.layer_maps.shape == (3, 4, 4)
    layer = LayerGradCam(resnet, resnet.layer4).attribute(nchw(x), target=torch.tensor(targets),
                                                           relu_attributions=True)
    np.testing.assert_allclose(ours.layer_maps, layer[:, 0].detach().numpy(), rtol=1e-4,
                               atol=1e-5 * ours.layer_maps.max())
    up = LayerAttribution.interpolate(layer, (112, 112), interpolate_mode="bilinear")[:, 0].detach().numpy()
    np.testing.assert_allclose(ours.maps, up, rtol=1e-4, atol=1e-5 * ours.maps.max())


def pytorch_grad_cam_layer_maps(cam, x: np.ndarray, targets: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-grad-cam's raw maps at layer resolution (after its ReLU) and its final scaled, resized output."""
    final = cam(input_tensor=nchw(x), targets=[ClassifierOutputTarget(t) for t in targets])
    acts = cam.activations_and_grads.activations[0].numpy()
    grads = cam.activations_and_grads.gradients[0].numpy()
    raw = cam.get_cam_image(nchw(x), cam.target_layers[0], None, acts, grads, False)
    return np.maximum(raw, 0), final


def scaled_like_pytorch_grad_cam(layer_maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Min-max scaling, resize, and min-max scaling again (its aggregation over target layers rescales)."""
    from gradsight.methods.cam import upsample

    def scale(m):
        low = m.min(axis=(1, 2), keepdims=True)
        return (m - low) / (1e-7 + (m - low).max(axis=(1, 2), keepdims=True))

    return scale(upsample(scale(layer_maps), size))


@pytest.mark.parametrize("method,reference", [("grad_cam", GradCAM), ("grad_cam_pp", GradCAMPlusPlus),
                                              ("layer_cam", LayerCAM)])
def test_equals_pytorch_grad_cam_on_resnet18(method, reference):
    net = conditioned_resnet18(seed=1)
    # Logits x 100: pytorch-grad-cam's Grad-CAM++ adds 1e-6 to alpha's denominator 2 g^2 + ..., which is of the
    # same size for this random net's gradients (~3e-3 per position); larger gradients make the 1e-6 negligible.
    with torch.no_grad():
        net.fc.weight.mul_(100)
        net.fc.bias.mul_(100)
    x = normal_inputs(2, 112, seed=3)
    targets = [2, 7]
    ours = attribute(net, x, method=method, layer="layer4", target=targets)
    with reference(model=net, target_layers=[net.layer4]) as cam:
        raw, final = pytorch_grad_cam_layer_maps(cam, x, targets)
    np.testing.assert_allclose(ours.layer_maps, raw, rtol=1e-4, atol=1e-5 * raw.max())
    # The final output: PIL's and cv2's bilinear resize agree to float32 rounding.
    np.testing.assert_allclose(scaled_like_pytorch_grad_cam(ours.layer_maps, (112, 112)), final, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method,reference", [("grad_cam", GradCAM), ("grad_cam_pp", GradCAMPlusPlus),
                                              ("layer_cam", LayerCAM)])
def test_cam_methods_on_the_embedded_model_with_the_photo(embedded, ouzel_path, method, reference):
    x = prepare_inputs([ouzel_path], embedded.preprocess).arrays
    ours = attribute(embedded, ouzel_path, method=method)
    assert ours.options["layer"] == "bn2" and ours.targets.tolist() == [20]  # BatchNorm + ReLU6 before the pool
    assert ours.layer_maps.shape == (1, 7, 7)
    module = embedded.module
    if method == "grad_cam":
        layer = LayerGradCam(module, module.bn2).attribute(nchw(x), target=20, relu_attributions=True)
        np.testing.assert_allclose(ours.layer_maps, layer[:, 0].detach().numpy(), rtol=1e-4,
                                   atol=1e-5 * ours.layer_maps.max())
    private = copy.deepcopy(module)  # pytorch-grad-cam fills parameters' .grad: not on the shared model
    compared = ours
    if method == "grad_cam_pp":
        # pytorch-grad-cam adds 1e-6 to alpha's denominator 2 g^2 + sum(A) g^3, and this model's gradients at bn2
        # (~1e-3 a position) make that 10-20% of it: both run with the logits x 1000, where 1e-6 is negligible.
        with torch.no_grad():
            private.classifier.weight.mul_(1000)
            private.classifier.bias.mul_(1000)
        compared = attribute(copy.deepcopy(private), x, method=method, layer="bn2", target=20)
    with reference(model=private, target_layers=[private.bn2]) as cam:
        raw, final = pytorch_grad_cam_layer_maps(cam, x, [20])
    np.testing.assert_allclose(compared.layer_maps, raw, rtol=1e-4, atol=1e-5 * raw.max())
    np.testing.assert_allclose(scaled_like_pytorch_grad_cam(compared.layer_maps, (224, 224)), final, atol=1e-4)
    # Mapped back onto the photo: one value per pixel of the original image, and most of the map's mass on the
    # bird (x in [110, 350], y in [65, 235] of the 500 x 348 photo; shared/data/README.md).
    with Image.open(ouzel_path) as photo:
        on_photo = ours.on_original(0)
        assert on_photo.shape == (photo.height, photo.width)
    bird = np.zeros(on_photo.shape, bool)
    bird[65:236, 110:351] = True
    seen = on_photo > 0
    assert on_photo[bird].sum() / on_photo.sum() > 1.3 * (bird & seen).sum() / seen.sum()


def test_score_cam_by_hand_with_probabilities_over_classes_as_weights():
    # Wang et al. 2020: M_k = the k-th activation map upsampled (bilinear, half-pixel centres) and scaled to
    # [0, 1]; its weight is softmax over classes of f(x * M_k) at the target; map = ReLU(sum_k w_k A_k).
    net = cam_net(seed=2)
    x = normal_inputs(2, 20, seed=3)
    targets = [1, 3]
    ours = attribute(net, x, method="score_cam", target=targets, internal_batch_size=4)
    assert ours.options["layer"] == "1"
    with torch.no_grad():
        a = F.relu(F.conv2d(nchw(x), net[0].weight, net[0].bias, stride=3))  # (N, 6, 6, 6)
        for i, target in enumerate(targets):
            weights = []
            for k in range(a.shape[1]):
                m = F.interpolate(a[i:i + 1, k:k + 1], size=(20, 20), mode="bilinear", align_corners=False)
                m = (m - m.min()) / (m.max() - m.min())
                probabilities = torch.softmax(net(nchw(x[i:i + 1]) * m), dim=1)[0]
                weights.append(float(probabilities[target]))
            combined = sum(w * a[i, k] for k, w in enumerate(weights))
            expected = F.relu(combined).numpy()
            np.testing.assert_allclose(ours.layer_maps[i], expected, rtol=1e-4, atol=1e-6 * expected.max())
            assert 0 < min(weights) and max(weights) < 1 and np.ptp(weights) > 1e-3  # really weighted
    upsampled = F.interpolate(torch.from_numpy(ours.layer_maps)[:, None], size=(20, 20), mode="bilinear",
                              align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(ours.maps, upsampled, rtol=1e-5, atol=1e-6 * ours.layer_maps.max())


def test_an_image_alone_equals_it_in_a_mixed_target_batch_and_any_chunking(resnet):
    x = normal_inputs(3, 64, seed=4)
    alone = attribute(resnet, x[1:2], method="grad_cam", target=7)
    batch = attribute(resnet, x, method="grad_cam", target=[2, 7, 4], batch_size=3)
    chunks = attribute(resnet, x, method="grad_cam", target=[2, 7, 4], batch_size=1)
    np.testing.assert_allclose(batch.layer_maps[1], alone.layer_maps[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(chunks.maps, batch.maps, rtol=1e-4, atol=1e-6)


def test_layers_that_are_missing_or_not_spatial_are_refused(resnet):
    x = normal_inputs(1, 64, seed=5)
    with pytest.raises(gradsight.UnknownNameError, match="layer4"):
        attribute(resnet, x, method="grad_cam", layer="layer5")
    with pytest.raises(gradsight.BadInputError, match="spatial"):
        attribute(resnet, x, method="grad_cam_pp", layer="fc")
    with pytest.raises(gradsight.BadInputError, match="more than one position"):
        attribute(resnet, x, method="layer_cam", layer="avgpool")  # (N, 512, 1, 1): a map of one position


def test_a_module_called_twice_is_refused_rather_than_read_at_its_first_call(resnet):
    # BasicBlock calls self.relu twice: inside the block, then on the block's output. Which one "layer4.1.relu"
    # means is ambiguous; today the first call's map is returned silently.
    with pytest.raises(gradsight.BadInputError, match="called 2 times"):
        attribute(resnet, normal_inputs(1, 64, seed=6), method="grad_cam", layer="layer4.1.relu")
