"""Each named model's preprocessing equals its library's own transform, and maps go back to the photo."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image

import gradsight
from gradsight.images import load_image
from gradsight.models.spec import ModelSpec
from gradsight.preprocess import Preprocess


def library_input(transform, image: Image.Image) -> np.ndarray:
    return transform(image).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def photos(ouzel_path):
    ouzel = load_image(ouzel_path).image
    portrait = ouzel.transpose(Image.Transpose.ROTATE_90).resize((301, 457))  # taller than wide, odd sizes
    return [ouzel, portrait]


def test_embedded_model_preprocessing_equals_timm_transform(embedded, photos):
    cfg = timm.data.resolve_data_config({}, model=embedded.module)
    transform = timm.data.create_transform(**cfg)
    for photo in photos:
        np.testing.assert_allclose(embedded.preprocess(photo), library_input(transform, photo), atol=1e-6)
    assert embedded.preprocess.interpolation == "bicubic" and embedded.preprocess.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_small", "vit_b_16"])
def test_torchvision_preprocessing_equals_weights_transforms(name, photos, tmp_path):
    model = torchvision.models.get_model(name, weights=None)
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    loaded = gradsight.load_model(name, weights=path)
    transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    for photo in photos:
        np.testing.assert_allclose(loaded.preprocess(photo), library_input(transform, photo), atol=1e-6)


def test_caffe_style_preprocessing_is_bgr_minus_mean():
    pixels = np.array([[[10, 20, 30], [200, 100, 0]]], dtype=np.uint8).repeat(16, 0).repeat(8, 1)
    prep = Preprocess(resize=None, crop=None, mean=(103.939, 116.779, 123.68), std=(1, 1, 1), pixel_max=1.0,
                      channel_order="BGR")
    out = prep(Image.fromarray(pixels))
    np.testing.assert_allclose(out[0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_geometry_is_torchvision_arithmetic():
    prep = Preprocess(resize=256, crop=224)
    geo = prep.geometry((500, 348))
    # shorter side 348 -> 256; longer side int(256 * 500 / 348) = int(367.8...) = 367
    assert geo.resized_size == (int(256 * 500 / 348), 256)
    # crop offsets round((367 - 224) / 2) = round(71.5) = 72 and (256 - 224) / 2 = 16
    assert geo.crop_box == (72, 16, 72 + 224, 16 + 224)


def test_map_goes_back_onto_the_crop_region_of_the_photo():
    prep = Preprocess(resize=256, crop=224)
    on_photo = prep.to_original(np.ones((224, 224), np.float32), (500, 348))
    assert on_photo.shape == (348, 500)
    left, top, right, bottom = prep.geometry((500, 348)).crop_box_on_original()
    # crop box 72..296 of 367 resized columns -> 72 * 500/367 .. 296 * 500/367 in the photo
    assert left == pytest.approx(72 * 500 / 367) and right == pytest.approx(296 * 500 / 367)
    inside = on_photo[int(top) + 2:int(bottom) - 2, int(left) + 2:int(right) - 2]
    assert np.allclose(inside, 1.0)
    assert on_photo[:, : int(left) - 1].max() == 0 and on_photo[:, int(right) + 2:].max() == 0


def test_user_preprocessing_overrides_the_spec(cnn, ouzel_path):
    prep = Preprocess(resize=40, crop=32)
    result = gradsight.saliency(cnn, ouzel_path, preprocess=prep)
    assert result.saliency.shape == (1, 32, 32)
    spec = ModelSpec("x", "torch", prep)
    assert spec.preprocess.input_size == (32, 32)
