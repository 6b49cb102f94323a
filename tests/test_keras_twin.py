"""``keras:efficientnet_lite0``: the embedded model converted to Keras is the same network with the same weights.
The oracle is the PyTorch model itself: the same logits on the photo, and the same map for every attribution
method (each framework's own gradients, hooks and modified copies)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

keras = pytest.importorskip("keras")

import gradsight  # noqa: E402
from gradsight.adapters.keras.twin import efficientnet_lite0_as_keras  # noqa: E402
from gradsight.inputs import prepare_inputs  # noqa: E402

# Keras names are the PyTorch ones with "_" for "."; timm's BatchNorm + ReLU6 is two Keras layers.
LAYERS = {"score_cam": ("blocks.6.0.bn3", "blocks_6_0_bn3")}  # 320 maps, not the head's 1280
OPTIONS = {"smoothgrad": {"n_samples": 4}, "integrated_gradients": {"n_steps": 8},
           "occlusion": {"window": 56, "stride": 56}}


@pytest.fixture(scope="module")
def twin():
    return gradsight.load_model("keras:efficientnet_lite0")


@pytest.fixture(scope="module")
def photo(embedded, ouzel_path):
    return prepare_inputs([ouzel_path], embedded.preprocess).arrays


def test_same_logits_preprocessing_and_names_as_the_embedded_model(twin, embedded, photo):
    assert twin.spec.framework == "keras" and twin.spec.preprocess == embedded.spec.preprocess
    assert twin.class_names == embedded.class_names and "converted to Keras" in twin.spec.weights
    with torch.no_grad():
        expected = embedded.module(torch.from_numpy(photo).permute(0, 3, 1, 2)).numpy()
    got = np.asarray(twin.module(photo, training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert int(got.argmax()) == 20  # water ouzel
    # Every weight of the PyTorch model went somewhere: same count of parameters (BatchNorm statistics too).
    torch_count = sum(t.numel() for t in embedded.module.state_dict().values() if t.is_floating_point())
    assert sum(int(np.prod(w.shape)) for w in twin.module.weights) == torch_count


@pytest.mark.slow
@pytest.mark.parametrize("method", [m["name"] for m in gradsight.list_methods()])
def test_every_method_gives_the_same_map_on_the_photo(twin, embedded, ouzel_path, method):
    torch_layer, keras_layer = LAYERS.get(method, (None, None))
    options = OPTIONS.get(method, {})
    t = gradsight.attribute(embedded, ouzel_path, method=method, layer=torch_layer, **options) if torch_layer \
        else gradsight.attribute(embedded, ouzel_path, method=method, **options)
    k = gradsight.attribute(twin, ouzel_path, method=method, layer=keras_layer, **options) if keras_layer \
        else gradsight.attribute(twin, ouzel_path, method=method, **options)
    assert t.targets.tolist() == k.targets.tolist() == [20]
    scale = float(np.abs(t.maps).max())
    # Float32 rounding of two frameworks' kernels: 4e-7 to 1e-5 relative L2, but 5e-4 for Integrated Gradients,
    # whose path starts at the black baseline, where ReLU6 inputs within rounding of 0 go either way.
    assert np.linalg.norm(k.maps - t.maps) / np.linalg.norm(t.maps) < 1e-3, method
    np.testing.assert_allclose(k.maps, t.maps, rtol=0, atol=1e-2 * scale)


def test_other_architectures_are_refused_by_name():
    import torchvision

    with pytest.raises(gradsight.BadInputError, match="Conv2d|conv"):
        efficientnet_lite0_as_keras(_resnet_like(torchvision))


def _resnet_like(torchvision):
    """A timm-shaped object whose stem pads symmetrically with stride 2 (not TensorFlow's 'same')."""
    net = torchvision.models.resnet18()
    net.conv_stem, net.bn1, net.blocks = net.conv1, net.bn1, []
    return net


def test_both_frameworks_trace_the_same_receptive_fields(twin, embedded):
    # Two independent traces (PyTorch's module calls, Keras' layer configurations) of the one network: every
    # convolution has the same size, stride, padding and unit rectangles in both.
    torch_fields = gradsight.receptive_field(embedded)
    keras_fields = gradsight.receptive_field(twin)
    convolutions = [layer for layer in torch_fields.layers if layer.kind in ("Conv2d", "Conv2dSame")]
    assert len(convolutions) == 1 + 2 + 15 * 3 + 1  # stem, the separable block, 15 inverted residuals, head
    for layer in convolutions:
        other = keras_fields[layer.name.replace(".", "_")]
        assert (other.size, other.stride, other.padding) == (layer.size, layer.stride, layer.padding), layer.name
        assert other.spatial_shape == layer.spatial_shape
        rows, cols = layer.spatial_shape
        for unit in ((0, 0), (rows // 2, cols // 2), (rows - 1, cols - 1)):
            assert other.rect(unit) == layer.rect(unit), (layer.name, unit)
