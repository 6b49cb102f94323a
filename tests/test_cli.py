"""The CLI end to end: the demo's outputs, their contents, --expect, several images."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gradsight.rendering.saliency import to_uint8


def gradsight_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gradsight.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = gradsight_cli("saliency", "--expect", "20", "--out", str(out))
    return proc, out


def test_demo_prints_top5_with_water_ouzel_first(demo):
    proc, _ = demo
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    first = next(line for line in lines if line.strip().startswith("1."))
    assert "20" in first and "water ouzel, dipper" in first
    assert sum(line.strip()[:2] in {"1.", "2.", "3.", "4.", "5."} for line in lines) == 5


def test_demo_writes_png_figure_npy_and_json(demo):
    _, out = demo
    assert sorted(p.name for p in out.iterdir()) == [
        "ouzel.json", "ouzel_figure.png", "ouzel_saliency.npy", "ouzel_saliency.png"]
    raw = np.load(out / "ouzel_saliency.npy")
    assert raw.shape == (224, 224) and raw.dtype == np.float32 and raw.max() > 0
    png = Image.open(out / "ouzel_saliency.png")
    assert png.mode == "L" and png.size == (224, 224)
    # documented normalisation: round(clip(map / p99, 0, 1) * 255)
    expected = np.rint(np.clip(raw / np.percentile(raw, 99), 0, 1) * 255)
    np.testing.assert_array_equal(np.asarray(png), expected.astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(png), to_uint8(raw))
    figure = Image.open(out / "ouzel_figure.png")
    assert figure.size[0] > 2 * figure.size[1]  # three panels side by side
    record = json.loads((out / "ouzel.json").read_text())
    assert record["prediction"] == 20 and record["target"] == 20 and record["score"] == "logit"
    assert record["prediction_label"] == "water ouzel, dipper" and record["probability"] > 0.9
    assert record["preprocess"]["interpolation"] == "bicubic" and record["preprocess"]["crop"] == 224
    assert record["gradsight_version"] and record["model"] == "efficientnet_lite0"
    assert record["saliency_max"] == pytest.approx(float(raw.max()))
    # written through temporary files, but with the mode any new file gets (0o666 minus the umask)
    mask = os.umask(0)
    os.umask(mask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~mask}


@pytest.mark.slow
def test_expect_mismatch_exits_1_and_several_images_get_their_own_files(tmp_path, ouzel_path):
    mirrored = tmp_path / "ouzel.png"  # same stem as the bundled photo: names must not collide
    Image.open(ouzel_path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    out = tmp_path / "out"
    proc = gradsight_cli("saliency", str(ouzel_path), str(mirrored), "--expect", "21", "--batch-size", "1",
                         "--target", "20", "--score", "prob", "--out", str(out))
    assert proc.returncode == 1
    assert "expected top-1 class 21" in proc.stderr and "Traceback" not in proc.stderr
    names = sorted(p.name for p in out.iterdir())
    # same stem and extension: the parent folders tell them apart (the bundled photo is in gradsight/data/)
    assert "data_ouzel_png.json" in names and f"{tmp_path.name}_ouzel_png.json" in names and len(names) == 8
    record = json.loads((out / f"{tmp_path.name}_ouzel_png.json").read_text())
    assert record["score"] == "prob" and record["target"] == 20 and record["source"] == str(mirrored)
