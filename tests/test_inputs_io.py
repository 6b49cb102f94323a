"""What an input is: photos vs model input (never guessed), EXIF orientation, frames, bit depths, FIFOs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import gradsight
from gradsight.images import load_image

BOTH_READINGS = ("input_kind='photo", "input_kind='model_input'")


@pytest.fixture(scope="module")
def ouzel_pixels(ouzel_path):
    return np.asarray(Image.open(ouzel_path).convert("RGB"))


# --- float arrays and tensors: photo or model input? -----------------------------------------------------

@pytest.mark.parametrize("scale", [1.0, 1 / 255])
def test_float_photo_is_refused_with_both_readings(embedded, ouzel_pixels, scale):
    # The case: np.asarray(img, "float32") was taken as model input ("redshank", p = 0.013).
    x = ouzel_pixels.astype(np.float32) * np.float32(scale)
    with pytest.raises(gradsight.BadInputError) as info:
        gradsight.saliency(embedded, x)
    message = str(info.value)
    assert all(reading in message for reading in BOTH_READINGS), message
    assert ("0..255" if scale == 1.0 else "0..1") in message and "(348, 500, 3)" in message


def test_float_photo_declared_as_photo_equals_the_uint8_photo(embedded, ouzel_pixels, ouzel_path):
    reference = gradsight.saliency(embedded, ouzel_path, fast=False)
    as_255 = gradsight.saliency(embedded, ouzel_pixels.astype(np.float32), input_kind="photo", fast=False)
    as_01 = gradsight.saliency(embedded, torch.from_numpy(ouzel_pixels / 255.0).permute(2, 0, 1).float(),
                               input_kind="photo01", fast=False)
    for result in (as_255, as_01):
        assert int(result.predictions[0]) == 20 and result.prediction_probabilities[0] > 0.9
        np.testing.assert_array_equal(result.saliency, reference.saliency)
        assert result.input_kinds == ("photo",) and result.geometries[0].original_size == (500, 348)


def test_declared_photo_out_of_range_is_refused(embedded, ouzel_pixels):
    with pytest.raises(gradsight.BadInputError, match="0..1"):
        gradsight.saliency(embedded, ouzel_pixels.astype(np.float32), input_kind="photo01")
    with pytest.raises(gradsight.BadInputError, match="input_kind"):
        gradsight.saliency(embedded, ouzel_pixels, input_kind="picture")


def test_normalised_model_input_is_accepted_and_recorded(embedded, ouzel_path):
    from gradsight.inputs import prepare_inputs

    x = prepare_inputs([ouzel_path], embedded.preprocess).arrays  # (x / 255 - 0.5) / 0.5: has negatives
    assert x.min() < 0
    result = gradsight.saliency(embedded, x, fast=False)
    assert int(result.predictions[0]) == 20 and result.input_kinds == ("model_input",)
    np.testing.assert_array_equal(result.saliency, gradsight.saliency(embedded, ouzel_path, fast=False).saliency)


def test_float_tensor_in_photo_range_needs_a_declaration(cnn):
    x = torch.rand(1, 3, 24, 24)
    with pytest.raises(gradsight.BadInputError) as info:
        gradsight.saliency(cnn, x)
    assert all(reading in str(info.value) for reading in BOTH_READINGS)
    result = gradsight.saliency(cnn, x, input_kind="model_input")
    expected = cnn(x).detach().numpy()
    np.testing.assert_allclose(result.logits, expected, rtol=1e-4, atol=1e-5)
    # one channel (or any count but 3) cannot be an RGB photo: no declaration needed
    one = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    assert gradsight.saliency(one, np.random.default_rng(0).random((2, 16, 16, 1), np.float32)).input_kinds == (
        "model_input", "model_input")


@pytest.mark.parametrize("layout", ["CHW", "HWC", "NCHW"])
def test_uint8_tensor_is_a_photo(embedded, ouzel_pixels, ouzel_path, layout):
    hwc = torch.from_numpy(ouzel_pixels.copy())
    tensor = {"CHW": hwc.permute(2, 0, 1), "HWC": hwc, "NCHW": hwc.permute(2, 0, 1)[None]}[layout]
    before = tensor.clone()
    result = gradsight.saliency(embedded, tensor, fast=False)
    assert int(result.predictions[0]) == 20 and result.input_kinds == ("photo",)
    np.testing.assert_array_equal(result.saliency, gradsight.saliency(embedded, ouzel_path, fast=False).saliency)
    assert torch.equal(tensor, before)


def test_uint8_tensor_with_an_ambiguous_layout_is_refused(cnn):
    tensor = torch.zeros(3, 40, 3, dtype=torch.uint8)  # (3, H=40, W=3) or (H=3, W=40, 3)?
    with pytest.raises(gradsight.BadInputError, match=r"\(3, H, W\).*\(H, W, 3\)"):
        gradsight.saliency(cnn, tensor)


def test_photo_for_a_one_channel_model_is_refused_before_running(ouzel_path):
    network = gradsight.load_model("seed-cnn", architecture_only=True)  # a (1, 128, 128) input
    with pytest.raises(gradsight.BadInputError, match="1 channel"):
        gradsight.saliency(network, ouzel_path)


# --- reading photos ---------------------------------------------------------------------------------------

def test_exif_orientation_is_applied_and_recorded(embedded, ouzel_path, tmp_path):
    # A phone stores the pixels sideways and says so in EXIF (Orientation 6: rotate 90 degrees clockwise).
    sideways = Image.open(ouzel_path).convert("RGB").transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    sideways.save(path, quality=95, exif=exif)
    stored = np.asarray(Image.open(path))
    assert stored.shape == (500, 348, 3)
    upright = np.ascontiguousarray(np.rot90(stored, k=-1))  # numpy's own clockwise rotation, the oracle
    assert upright.shape == (348, 500, 3)
    # the decoded JPEG, turned upright, is the original photo up to JPEG's loss
    assert np.abs(upright.astype(int) - np.asarray(Image.open(ouzel_path).convert("RGB"), int)).mean() < 4
    result = gradsight.saliency(embedded, path, fast=False)
    reference = gradsight.saliency(embedded, upright, fast=False)
    assert int(result.predictions[0]) == 20
    np.testing.assert_array_equal(result.saliency, reference.saliency)
    assert result.geometries[0].original_size == (500, 348) and result.on_original(0).shape == (348, 500)
    assert "Orientation 6" in result.orientations[0] and "90" in result.orientations[0]
    assert load_image(path).orientation == result.orientations[0]
    assert result.orientations[0] is not None and reference.orientations == (None,)


def test_animated_gif_and_multipage_tiff_say_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), (40 * k, 0, 0)) for k in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    tiff = tmp_path / "pages.tif"
    frames[0].save(tiff, save_all=True, append_images=frames[1:])
    for path in (gif, tiff):
        photo = load_image(path)
        assert "first of 3 frames" in photo.converted_from, photo.converted_from
        assert np.asarray(photo.image)[0, 0, 0] == 0  # really the first frame
    still = tmp_path / "still.gif"
    frames[1].save(still)
    assert "frames" not in (load_image(still).converted_from or "")


def test_thirty_two_bit_tiff_is_scaled_by_its_range_and_labelled_truthfully(tmp_path):
    values = np.array([[0, 100_000, 200_000, 400_000]] * 16, dtype=np.int32).repeat(4, axis=1)
    path = tmp_path / "deep.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    photo = load_image(path)
    assert "32-bit" in photo.converted_from and "16-bit" not in photo.converted_from
    assert "0..400000" in photo.converted_from
    # (value - 0) / (400000 - 0) * 255, rounded: 0, 63.75 -> 64, 127.5 -> 128, 255
    assert np.asarray(photo.image)[0, ::4, 0].tolist() == [0, 64, 128, 255]


def test_floating_point_tiff_is_refused(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((20, 20), 0.5, np.float32)).save(path)
    with pytest.raises(gradsight.BadInputError, match="floating-point"):
        load_image(path)


def test_sixteen_bit_pgm_opened_as_mode_i_stays_sixteen_bit(tmp_path):
    path = tmp_path / "grey.pgm"
    path.write_bytes(b"P5\n16 16\n65535\n" + np.full((16, 16), 65535 // 3, ">u2").tobytes())
    photo = load_image(path)
    assert "16-bit" in photo.converted_from
    assert np.asarray(photo.image)[0, 0].tolist() == [85, 85, 85]  # 21845 / 65535 * 255 = 85


def test_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    code = textwrap.dedent(f"""
        import gradsight
        try:
            gradsight.load_image({str(fifo)!r})
        except gradsight.BadInputError as err:
            print(err)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "a regular image file" in proc.stdout and "FIFO" in proc.stdout, proc.stdout + proc.stderr


def test_photo_from_bytes_is_named(ouzel_path):
    from gradsight.images import load_image_bytes

    photo = load_image_bytes(ouzel_path.read_bytes(), "<stdin>")
    assert photo.source == "<stdin>" and photo.size == (500, 348)
    with pytest.raises(gradsight.BadInputError, match="cannot read"):
        load_image_bytes(b"not an image", "<stdin>")
