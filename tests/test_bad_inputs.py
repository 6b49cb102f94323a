"""Bad input: one clear message (expected / got / what to do), exit status 2, no traceback, no output file."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gradsight
from gradsight.images import MIN_SIDE, load_image


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradsight.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A tiny file whose header claims side x side pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
                     + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))
    return path


def bad_files(tmp: Path, ouzel: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a phrase the message must contain)."""
    truncated = tmp / "truncated.png"
    truncated.write_bytes(ouzel.read_bytes()[: 60_000])
    text = tmp / "notes.png"
    text.write_text("this is not an image\n")
    tiny = tmp / "tiny.png"
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tiny)
    folder = tmp / "folder"
    folder.mkdir()
    return {
        "missing": (tmp / "nope.jpg", "no such file"),
        "directory": (folder, "a directory"),
        "not an image": (text, "cannot read"),
        "truncated": (truncated, "damaged"),
        "1x1": (tiny, f"at least {MIN_SIDE}x{MIN_SIDE}"),
        "bomb": (bomb_png(tmp / "bomb.png"), "decompression bomb"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "not an image", "truncated", "1x1", "bomb"])
def test_bad_image_file_api_error(case, tmp_path, ouzel_path):
    path, phrase = bad_files(tmp_path, ouzel_path)[case]
    with pytest.raises(gradsight.BadInputError) as info:
        load_image(path)
    message = str(info.value)
    assert phrase in message and "expected" in message and "got" in message


def assert_clean_failure(proc: subprocess.CompletedProcess, out: Path, phrase: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gradsight: error:"), proc.stderr
    assert phrase in lines[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_every_bad_file_fails_cleanly_in_the_cli_and_writes_nothing(tmp_path, ouzel_path):
    # One CLI process per case would cost a model load each; the good photo first proves nothing is written
    # even when valid images come before the bad one.
    for case, (path, phrase) in bad_files(tmp_path, ouzel_path).items():
        out = tmp_path / f"out-{case.replace(' ', '_')}"
        proc = run_cli("saliency", str(ouzel_path), str(path), "--out", str(out))
        assert_clean_failure(proc, out, phrase)


@pytest.mark.parametrize(("args", "phrase"), [
    (["--model", "resnet5"], "Did you mean 'resnet50'"),
    (["--target", "1000"], "0..999"),
    (["--target", "-1"], "0..999"),
    (["--model", "efficientnet_lite0", "--weights", "missing.pth"], "expected an existing file"),
])
def test_bad_options_fail_cleanly(args, phrase, tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(run_cli("saliency", *args, "--out", str(out)), out, phrase)


def test_non_integer_target_is_a_usage_error(tmp_path):
    proc = run_cli("saliency", "--target", "bird", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "expected 'auto' or a class index" in proc.stderr


def test_nan_array_is_refused(cnn):
    x = np.zeros((1, 16, 16, 3), np.float32)
    x[0, 3, 4, 1] = np.nan
    with pytest.raises(gradsight.BadInputError, match="1 NaN or infinite values"):
        gradsight.saliency(cnn, x)


def test_unknown_model_suggests_close_names():
    with pytest.raises(gradsight.UnknownNameError) as info:
        gradsight.load_model("efficientnet_lite")
    assert "efficientnet_lite0" in info.value.suggestions


def test_model_output_that_is_not_class_scores(rng):
    import torch

    net = torch.nn.Conv2d(3, 2, 3)  # returns a feature map, not (N, classes)
    with pytest.raises(gradsight.BadInputError, match="class scores of shape"):
        gradsight.saliency(net, rng.standard_normal((1, 8, 8, 3)).astype(np.float32))


# Conversions that keep an image's meaning: checked on the pixel values they must give.

def test_sixteen_bit_greyscale_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257 * 10, 65535, 257 * 128]] * 16, dtype=np.uint16).repeat(4, axis=1)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    photo = load_image(path)
    rgb = np.asarray(photo.image)
    assert photo.image.mode == "RGB" and "16-bit" in photo.converted_from
    assert rgb[0, ::4, 0].tolist() == [0, 10, 255, 128]  # value / 65535 * 255
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_greyscale_is_repeated_over_channels(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((20, 20), 77, np.uint8), "L").save(path)
    assert np.asarray(load_image(path).image)[0, 0].tolist() == [77, 77, 77]


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:10, :, 3] = 255  # opaque red-ish top half, transparent bottom half
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    rgb = np.asarray(load_image(path).image)
    assert rgb[0, 0].tolist() == [200, 0, 0] and rgb[-1, -1].tolist() == [255, 255, 255]


def test_cmyk_and_palette_are_converted(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(cmyk)  # pure red in CMYK
    red = np.asarray(load_image(cmyk).image)[5, 5]
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    palette = tmp_path / "palette.png"
    indexed = Image.new("P", (20, 20), 1)
    indexed.putpalette([0, 0, 0, 10, 120, 230] + [0] * 762)
    indexed.save(palette)
    photo = load_image(palette)
    assert photo.converted_from.startswith("P") and np.asarray(photo.image)[3, 3].tolist() == [10, 120, 230]


@pytest.mark.slow
def test_converted_images_run_end_to_end_in_the_cli(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90), dtype=np.uint8), "L").save(path)
    proc = run_cli("saliency", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "grey_saliency.png").exists()
    # The map written is the map of the converted photo: the same as the API gives for its RGB version.
    import json

    import gradsight

    record = json.loads((tmp_path / "out" / "grey.json").read_text())
    assert record["converted_from"].startswith("L") and record["input_kind"] == "photo"
    rgb = Image.open(path).convert("RGB")
    expected = gradsight.saliency("efficientnet_lite0", rgb).saliency[0]
    written = np.load(tmp_path / "out" / "grey_saliency.npy")
    np.testing.assert_allclose(written, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_output_folder_that_is_a_file_fails_cleanly(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    proc = run_cli("saliency", "--out", str(blocker / "sub"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "output folder" in proc.stderr and "Choose another --out folder" in proc.stderr
    assert blocker.read_text() == "a file, not a folder"


def test_a_reason_ending_in_a_full_stop_gets_no_second_one():
    from gradsight.errors import BadInputError, cause_of

    assert str(BadInputError("x", expected="a", got="b.", fix="c")) == "x: expected a, got b. C."
    assert str(BadInputError("x", expected="a", got="b", fix="c")) == "x: expected a, got b. C."
    # Another library's message: its first paragraph on one line, cut at the last full sentence that fits.
    err = RuntimeError("First line\nwraps here. Second sentence is long.\n\nDetails nobody needs.")
    assert cause_of(err) == "First line wraps here. Second sentence is long."
    assert cause_of(err, 30) == "First line wraps here"
    assert cause_of(RuntimeError()) == "RuntimeError"
