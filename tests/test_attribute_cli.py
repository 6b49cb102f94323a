"""`gradsight attribute` on image files (issue 10: PNG + NPY + JSON per image and method, a comparison figure),
and `gradsight saliency` on folders (issue 13's runner). Oracles: `gradsight.attribute` and `gradsight.saliency`
image by image, the documented colour scale (`to_rgb`), the softmax's top-5 written out."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from testkit import F16_ATOL, F16_RTOL, make_folder, tiny_model

import gradsight
from gradsight.cli import main
from gradsight.rendering.attribution import to_rgb

FACTORY = """
from testkit import tiny_model


def tiny():
    return tiny_model()
"""
MODEL = "tinyfactory:tiny"


@pytest.fixture(autouse=True)
def factory(tmp_path, monkeypatch):
    (tmp_path / "tinyfactory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def top5(logits: np.ndarray) -> list[int]:
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return list(np.argsort(-probs, kind="stable")[:5])


def test_files_mode_on_the_bundled_photo_writes_each_methods_files_and_the_comparison(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "attribute", "--method", "gradient,integrated_gradients", "--option", "n_steps=4",
                            "--model", MODEL, "--out", out)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"ouzel_{m}.{ext}" for m in ("gradient", "integrated_gradients")
                            for ext in ("png", "npy", "json")] + ["ouzel_methods.png"])
    photo = gradsight.example_image_path()
    for method, options in (("gradient", {}), ("integrated_gradients", {"n_steps": 4})):
        expected = gradsight.attribute(tiny_model(), photo, method=method, **options)
        stored = np.load(out / f"ouzel_{method}.npy")
        assert stored.dtype == np.float32
        np.testing.assert_allclose(stored, expected.maps[0], rtol=1e-6, atol=1e-6 * np.abs(expected.maps[0]).max())
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"ouzel_{method}.png")), to_rgb(stored))
        sidecar = json.loads((out / f"ouzel_{method}.json").read_text())
        assert sidecar["method"] == method and sidecar["model"] == "tiny-cnn"  # the factory's LoadedModel
        assert [t["class"] for t in sidecar["top5"]] == top5(expected.logits[0])
    sidecar = json.loads((out / "ouzel_integrated_gradients.json").read_text())
    assert sidecar["options"]["n_steps"] == 4 and sidecar["options"]["rule"] == "gausslegendre"
    ig = gradsight.attribute(tiny_model(), photo, method="integrated_gradients", n_steps=4)
    assert sidecar["per_image"]["completeness_gap"] == pytest.approx(float(ig.per_image["completeness_gap"][0]),
                                                                    rel=1e-4, abs=1e-6)
    with Image.open(out / "ouzel_methods.png") as figure:  # photo + 2 panels side by side
        assert figure.width > 2.5 * figure.height
    predicted = int(np.argmax(ig.logits[0]))
    assert f"explained: logit[{predicted}]" in stdout and "by gradient, integrated_gradients" in stdout
    assert f"1. {predicted:4d}" in stdout and "completeness_gap" in stdout and "wrote 7 files" in stdout
    assert not (out / "manifest.jsonl").exists()


def test_files_mode_goes_chunk_by_chunk_and_names_collisions_apart(tmp_path, capsys):
    photo = Image.open(gradsight.example_image_path()).convert("RGB")
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    photo.crop((50, 0, 400, 300)).save(tmp_path / "x" / "bird.png")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "y" / "bird.png")
    photo.resize((120, 90)).save(tmp_path / "small.jpg", quality=95)
    files = [tmp_path / "x" / "bird.png", tmp_path / "y" / "bird.png", tmp_path / "small.jpg"]
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "attribute", *files, "--method", "grad_cam", "--option", "target=3",
                            "--batch-size", "2", "--model", MODEL, "--out", out)
    assert code == 0, err
    for path, stem in zip(files, ("x_bird_png", "y_bird_png", "small")):  # output_stems' rule
        expected = gradsight.attribute(tiny_model(), path, method="grad_cam", target=3)
        np.testing.assert_allclose(np.load(out / f"{stem}_grad_cam.npy"), expected.maps[0], rtol=1e-6,
                                   atol=1e-6 * expected.maps[0].max())
        np.testing.assert_allclose(np.load(out / f"{stem}_grad_cam_layer.npy"), expected.layer_maps[0], rtol=1e-6,
                                   atol=1e-6 * expected.layer_maps[0].max())
        sidecar = json.loads((out / f"{stem}_grad_cam.json").read_text())
        assert sidecar["target"] == 3 and sidecar["options"]["layer"] == "9"
    assert not list(out.glob("*_methods.png"))  # one method: no comparison
    assert stdout.count("explained: logit[3]") == 3


def test_each_sidecar_records_its_own_images_smoothgrad_sigma(tmp_path, capsys):
    photo = Image.open(gradsight.example_image_path()).convert("RGB")
    photo.save(tmp_path / "bright.png")
    photo.point(lambda v: 100 + v // 4).save(tmp_path / "dull.png")  # a quarter of the range: a smaller sigma
    files = [tmp_path / "bright.png", tmp_path / "dull.png"]
    out = tmp_path / "out"
    code, _, err = run(capsys, "attribute", *files, "--method", "smoothgrad", "--option", "n_samples=2",
                       "--model", MODEL, "--out", out)
    assert code == 0, err
    expected = gradsight.attribute(tiny_model(), [str(f) for f in files], method="smoothgrad", n_samples=2)
    sigmas = expected.options["sigma"]
    assert sigmas[1] < 0.3 * sigmas[0]
    for stem, sigma in zip(("bright", "dull"), sigmas):
        sidecar = json.loads((out / f"{stem}_smoothgrad.json").read_text())
        assert sidecar["options"]["sigma"] == pytest.approx(sigma) == sidecar["per_image"]["sigma"]
        assert sidecar["options"]["n_samples"] == 2 and sidecar["options"]["noise_level"] == 0.15


@pytest.mark.parametrize("args, words", [
    (["--method", "gradiant"], ["'gradient'"]),
    (["--method", "gradient,grad_cam", "--option", "n_steps=3"], ["n_steps", "grad_cam: layer"]),
    (["--method", "integrated_gradients", "--option", "n_steps=0"], ["n_steps", ">= 1"]),
    (["--method", "grad_cam", "--option", "layer=nope"], ["'nope'"]),
    (["--method", "gradient", "--option", "scor=prob"], ["Did you mean 'score'"]),
    (["--option", "target=9"], ["0..4"]),
    (["{tmp}/nope.jpg"], ["no such file or folder"]),
    (["{tmp}/notes.png"], ["Pillow cannot read"]),
    (["{photo}", "--png"], ["--png", "dataset runs"]),
    (["--batch-size", "0"], ["batch"]),
])
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, capsys, monkeypatch, args, words):
    (tmp_path / "notes.png").write_text("not an image")
    monkeypatch.setattr("gradsight.methods.attribute.attribute", lambda *a, **k: pytest.fail("computed"))
    out = tmp_path / "out"
    filled = [a.format(tmp=tmp_path, photo=gradsight.example_image_path()) for a in args]
    code, stdout, err = run(capsys, "attribute", *filled, "--model", MODEL, "--out", out)
    assert code == 2 and err.startswith("gradsight: error: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err
    assert not out.exists()


def test_help_says_which_inputs_go_where(capsys):
    with pytest.raises(SystemExit):
        main(["attribute", "--help"])
    text = capsys.readouterr().out
    assert "Files mode" in text and "Dataset mode" in text and "manifest.jsonl" in text


def test_saliency_on_a_folder_is_a_dataset_run_of_the_gradient(tmp_path, capsys):
    root = tmp_path / "photos"
    good = make_folder(root, 6, seed=4)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "saliency", root, "--recursive", "--score", "prob", "--model", MODEL,
                            "--out", out)
    assert code == 1 and "1 failed" in stdout and "corrupt.jpg" in stdout  # the corrupt file, recorded
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    latest = {r["path"]: r for r in lines}
    assert sorted(latest) == sorted([*good, "corrupt.jpg"])
    for rel in good:
        record = latest[rel]
        assert record["method"] == "gradient" and record["options"]["score"] == "prob"
        expected = gradsight.saliency(tiny_model(), str(root / rel), score="prob").saliency[0]
        stored = np.load(out / f"{rel}.gradient.npy").astype(np.float32)
        np.testing.assert_allclose(stored, expected, rtol=F16_RTOL, atol=F16_ATOL + 1e-5 * expected.max())
    assert not list(out.glob("*_saliency.png"))  # the runner's layout, not the files mode's


def test_saliency_expect_on_a_folder_is_judged_from_the_runs_records(tmp_path, capsys):
    root = tmp_path / "one"
    root.mkdir()
    shutil.copy(gradsight.example_image_path(), root / "ouzel.png")
    predicted = int(gradsight.saliency(tiny_model(), str(root / "ouzel.png")).predictions[0])
    code, stdout, err = run(capsys, "saliency", f"{root}/*.png", "--expect", predicted, "--model", MODEL,
                            "--out", tmp_path / "right")
    assert code == 0 and "1 done" in stdout, err
    wrong = (predicted + 1) % 5
    code, stdout, err = run(capsys, "saliency", root, "--expect", wrong, "--model", MODEL, "--out", tmp_path / "w")
    assert code == 1 and f"expected top-1 class {wrong}" in err and f"got {predicted}" in err
    code, _, err = run(capsys, "saliency", root, "--expect", 5, "--model", MODEL, "--out", tmp_path / "bad")
    assert code == 2 and "0..4" in err and not (tmp_path / "bad").exists()
    # files only: `gradsight saliency` as it always was (its own files, no manifest)
    code, stdout, err = run(capsys, "saliency", root / "ouzel.png", "--model", MODEL, "--out", tmp_path / "files")
    assert code == 0 and (tmp_path / "files" / "ouzel_saliency.npy").exists()
    assert not (tmp_path / "files" / "manifest.jsonl").exists()


def test_methods_prints_every_method_with_its_options_defaults_and_reference(capsys):
    code, out, err = run(capsys, "methods")
    assert code == 0 and not err
    blocks = {}
    for line in out.splitlines():
        if line and not line.startswith(" "):
            name = line.split()[0]
            blocks[name] = [line]
        elif line.strip():
            blocks[name].append(line.strip())
    listed = {m["name"]: m for m in gradsight.list_methods()}
    assert set(blocks) == set(listed)
    for name, method in listed.items():
        head, options, reference = blocks[name]
        assert head.split()[1] == method["kind"] and head.split()[2] == "/".join(method["frameworks"])
        assert options == "options: " + (", ".join(f"{k}={v!r}" for k, v in method["options"].items()) or "-")
        assert reference == method["reference"]
    # The defaults the papers give (the table), as the table prints them.
    for name, default in [("smoothgrad", "n_samples=50"), ("smoothgrad", "noise_level=0.15"),
                          ("smoothgrad", "variant='mean'"), ("smoothgrad", "seed=0"),
                          ("integrated_gradients", "n_steps=50"), ("integrated_gradients", "rule='gausslegendre'"),
                          ("integrated_gradients", "baseline='zeros'"), ("occlusion", "fill=0.0"),
                          ("grad_cam", "layer=None"), ("grad_cam_pp", "layer=None"), ("layer_cam", "layer=None")]:
        assert default in blocks[name][1], (name, default)
