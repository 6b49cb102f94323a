"""Dataset runs (issue 13): folders streamed in batches, one manifest line per image and method, resume,
Ctrl-C safety, bad images recorded, collect. Oracles: ``gradsight.saliency`` image by image, hashlib, the
softmax written out, float16's rounding written as arithmetic."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testkit import F16_ATOL, F16_RTOL, TINY_PREP, make_folder, tiny_model

import gradsight
from gradsight.errors import BadInputError
from gradsight.models.spec import LoadedModel, ModelSpec
from gradsight.runs import cli as runs_cli
from gradsight.runs import collect, engine, pipeline, run_dataset
from gradsight.runs.manifest import Manifest, read_lines
from gradsight.runs.records import encode_map

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return root, make_folder(root, 40)


def manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


def latest(out: Path) -> dict:
    return {(r["path"], r["method"]): r for r in manifest_lines(out)}


def copy_folder(folder, tmp_path) -> tuple[Path, list[str]]:
    root, good = folder
    shutil.copytree(root, tmp_path / "photos", symlinks=True)
    return tmp_path / "photos", good


def _target(root: Path) -> str:
    return os.readlink(root / "link.png")  # relative to the folder the link is in: the top


def test_folder_run_maps_equal_saliency_one_by_one(folder, tmp_path):
    root, good = folder
    model = tiny_model()
    before = [m.training for m in model.module.modules()]
    model.module.train()  # the user's flags, whatever they are, must come back as they were
    flags = [m.training for m in model.module.modules()]
    grads = [p.requires_grad for p in model.module.parameters()]
    out = tmp_path / "out"
    summary = run_dataset([root], out, model=model, recursive=True, batch_size=4, float32=True)
    assert (summary.found, summary.done, summary.failed, summary.skipped) == (len(good) + 1, len(good), 1, 0)
    assert summary.exit_code == 1 and [f[0] for f in summary.failures] == ["corrupt.jpg"]
    assert "truncated" in summary.failures[0][2] or "damaged" in summary.failures[0][2]
    assert [m.training for m in model.module.modules()] == flags != before
    assert [p.requires_grad for p in model.module.parameters()] == grads
    assert all(p.grad is None for p in model.module.parameters())
    model.module.eval()
    state = latest(out)
    assert sorted(p for p, _ in state) == sorted([*good, "corrupt.jpg"])  # no hidden file, text file or folder
    assert state[("corrupt.jpg", "gradient")]["status"] == "error"
    for rel in good:
        record = state[(rel, "gradient")]
        assert record["status"] == "ok" and record["map"]["file"] == f"{rel}.gradient.npy"
        assert record["sha256"] == hashlib.sha256((root / rel).read_bytes()).hexdigest()
        stored = np.load(out / record["map"]["file"])
        expected = gradsight.saliency(model, str(root / rel))  # the same image alone, through the public API
        assert stored.dtype == np.float32
        # a batch sums in another order than a single image: float32 rounding, relative to the map's scale
        np.testing.assert_allclose(stored, expected.saliency[0], rtol=1e-5, atol=1e-5 * expected.saliency[0].max())
        logits = expected.logits[0].astype(np.float64)
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert record["prediction"]["class"] == int(np.argmax(logits)) == record["target"]
        assert [t["class"] for t in record["top5"]] == list(np.argsort(-probs, kind="stable")[:5])
        np.testing.assert_allclose([t["probability"] for t in record["top5"]], np.sort(probs)[::-1][:5], rtol=1e-5)
        assert record["options"] == {"score": "logit", "target": "auto", "fast": True,
                                     "preprocess": TINY_PREP.as_dict() | {"mean": [0.5] * 3, "std": [0.25] * 3}}
        assert record["model"] == "tiny-cnn" and record["gradsight_version"] == gradsight.__version__
        assert set(record["timing"]) >= {"read_s", "preprocess_s", "compute_s", "write_s"}
    # the link's map is its target's map (same pixels, maybe another batch)
    target = _target(root)
    linked = np.load(out / f"{target}.gradient.npy")
    np.testing.assert_allclose(np.load(out / "link.png.gradient.npy"), linked, rtol=1e-5, atol=1e-5 * linked.max())
    assert not list(out.rglob("*.tmp"))


def test_without_recursive_only_the_top_folder_and_globs_name_paths_from_their_fixed_part(folder, tmp_path):
    root, good = folder
    top = [g for g in good if "/" not in g]
    summary = run_dataset([root], tmp_path / "flat", model=tiny_model(), dry_run=True)
    assert [rel for rel, _ in summary.todo] == sorted([*top, "corrupt.jpg"])
    in_a = sorted(g[2:] for g in good if g.startswith("a/") and g.endswith(".png"))
    summary = run_dataset([f"{root}/a/**/*.png"], tmp_path / "glob", model=tiny_model(), recursive=True,
                          dry_run=True)
    assert [rel for rel, _ in summary.todo] == in_a


def test_resume_skips_done_changed_option_or_file_recomputes(folder, tmp_path):
    root, good = copy_folder(folder, tmp_path)
    model, out = tiny_model(), tmp_path / "out"
    first = run_dataset([root], out, model=model, recursive=True, batch_size=8)
    assert (first.done, first.failed) == (len(good), 1)
    logit_maps = {rel: np.load(out / f"{rel}.gradient.npy") for rel in good}
    for rel in good[:5]:  # float16 by default, to float16 rounding of the single-image map
        assert logit_maps[rel].dtype == np.float16
        expected = gradsight.saliency(model, str(root / rel)).saliency[0]
        np.testing.assert_allclose(logit_maps[rel].astype(np.float32), expected, rtol=F16_RTOL,
                                   atol=F16_ATOL + 1e-5 * expected.max())

    again = run_dataset([root], out, model=model, recursive=True, batch_size=8)
    assert (again.done, again.skipped, again.failed) == (0, len(good), 1)  # the corrupt file is tried again

    prob = run_dataset([root], out, model=model, recursive=True, options=["score=prob"])
    assert (prob.done, prob.skipped) == (len(good), 0)
    assert not np.array_equal(np.load(out / f"{good[0]}.gradient.npy"), logit_maps[good[0]])
    # the files now hold probability maps: the old logit lines must not be taken for them
    back = run_dataset([root], out, model=model, recursive=True, options={"score": "logit"})
    assert (back.done, back.skipped) == (len(good), 0)

    changed = good[2]
    with Image.open(root / changed) as image:
        image.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(root / changed)
    edited = run_dataset([root], out, model=model, recursive=True)
    assert (edited.done, edited.skipped) == (1, len(good) - 1)
    assert latest(out)[(changed, "gradient")]["sha256"] == hashlib.sha256((root / changed).read_bytes()).hexdigest()

    other_weights = tiny_model()
    with __import__("torch").no_grad():
        next(other_weights.module.parameters()).mul_(2)
    assert run_dataset([root], out, model=other_weights, recursive=True).done == len(good)


def test_png_and_float32_outputs_are_options_of_what_is_on_disk(folder, tmp_path):
    root, good = folder
    out = tmp_path / "out"
    run_dataset([root / "a" / "b"], out, model=tiny_model())
    with_png = run_dataset([root / "a" / "b"], out, model=tiny_model(), png=True)
    count = len([g for g in good if g.startswith("a/b/")])
    assert with_png.done == count
    rel = next(g[4:] for g in good if g.startswith("a/b/"))
    values = np.load(out / f"{rel}.gradient.npy").astype(np.float32)
    png = np.asarray(Image.open(out / f"{rel}.gradient.png"))
    # the documented normalisation, written out: round(clip(map / p99, 0, 1) * 255) on the computed map
    record = latest(out)[(rel, "gradient")]
    assert record["png"]["normalisation"] == "round(clip(map / percentile(map, 99), 0, 1) * 255)"
    expected = np.rint(np.clip(values / np.percentile(values, 99), 0, 1) * 255)
    assert np.abs(png.astype(int) - expected).max() <= 1  # the PNG is made before float16 rounding
    assert run_dataset([root / "a" / "b"], out, model=tiny_model()).skipped == count  # PNGs are extra, not needed
    assert run_dataset([root / "a" / "b"], out, model=tiny_model(), float32=True).done == count


def test_float16_is_kept_only_when_it_changes_the_map_by_at_most_2_to_the_minus_10_of_its_maximum():
    values = np.array([[0.5, 0.25, 1e-3]], np.float32)
    stored, note = encode_map(values, float32=False)
    assert stored.dtype == np.float16 and note is None
    tiny = np.array([[3e-7, 1e-7]], np.float32)  # subnormal in float16: steps of 2**-24, about 6e-8
    stored, note = encode_map(tiny, float32=False)
    assert stored.dtype == np.float32 and "2**-10" in note
    huge = np.array([[7e4, 1.0]], np.float32)  # above float16's largest value, 65504
    assert encode_map(huge, float32=False)[0].dtype == np.float32
    assert encode_map(values, float32=True)[0].dtype == np.float32


SLOW_FACTORY = """
import sys, time
sys.path.insert(0, {tests!r})
from torch import nn
from testkit import small_cnn
from gradsight.models.spec import LoadedModel, ModelSpec
from gradsight.preprocess import Preprocess


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small_cnn()

    def forward(self, x):
        time.sleep(0.03)
        return self.net(x)


def slow():
    prep = Preprocess(resize=48, crop=40, mean=(0.5,) * 3, std=(0.25,) * 3)
    return LoadedModel(Slow().eval(), ModelSpec("slow-tiny", "torch", prep))
"""


@pytest.mark.slow
def test_sigint_mid_run_leaves_consistent_manifest_and_resume_computes_only_what_is_missing(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    good = make_folder(root, 300, seed=1)
    (tmp_path / "slowmodels.py").write_text(SLOW_FACTORY.format(tests=str(TESTS)))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    code = "import sys; from gradsight.runs.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "attribute", str(root), "--recursive", "--model",
                             "slowmodels:slow", "--out", str(out), "--batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_bytes().count(b"\n") >= 40:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "stopping after the current batch" in stderr and "interrupted" in stdout

    records, damaged = read_lines(manifest)
    assert damaged == 0 and manifest.read_bytes().endswith(b"\n")
    done_before = {r["path"] for r in records if r["status"] == "ok"}
    assert 40 <= len(done_before) < len(good)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.npy")}
    assert on_disk == {f"{rel}.gradient.npy" for rel in done_before}  # nothing written without its line
    for r in records:
        if r["status"] == "ok":
            assert os.path.getsize(out / r["map"]["file"]) == r["map"]["bytes"]
            assert np.load(out / r["map"]["file"]).shape == (40, 40)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    monkeypatch.syspath_prepend(str(tmp_path))
    resumed = run_dataset([root], out, model="slowmodels:slow", recursive=True, batch_size=16)
    assert (resumed.skipped, resumed.done, resumed.failed) == (len(done_before), len(good) - len(done_before), 1)
    new = manifest_lines(out)[len(records):]
    computed = {r["path"] for r in new if r["status"] == "ok"}
    assert computed == set(good) - done_before and not computed & done_before


def test_crash_between_new_files_and_their_line_never_leaves_an_old_line_vouching_for_them(folder, tmp_path,
                                                                                          monkeypatch):
    root, good = folder
    out, model, part = tmp_path / "out", tiny_model(), root / "a" / "b"
    count = len([g for g in good if g.startswith("a/b/")])
    assert run_dataset([part], out, model=model).done == count  # logit maps, lines ok
    real_append = Manifest.append

    def crash_on_ok(self, record):
        if record["status"] == "ok":
            raise KeyboardInterrupt  # the process dies after the new files are in place, before their line
        real_append(self, record)

    monkeypatch.setattr(Manifest, "append", crash_on_ok)
    with pytest.raises(KeyboardInterrupt):
        run_dataset([part], out, model=model, options={"score": "prob"}, batch_size=count)
    monkeypatch.setattr(Manifest, "append", real_append)
    # the files may now hold probability maps; the logit lines must not be believed
    assert run_dataset([part], out, model=model).done == count


def test_cut_last_line_is_ignored_and_later_lines_start_on_their_own(folder, tmp_path):
    root, good = folder
    out, part = tmp_path / "out", root / "a" / "b"
    count = len([g for g in good if g.startswith("a/b/")])
    run_dataset([part], out, model=tiny_model(), limit=3)
    with open(out / "manifest.jsonl", "ab") as handle:
        handle.write(b'{"path": "img999.png", "method": "gradient", "sta')  # a crash in the middle of a line
    summary = run_dataset([part], out, model=tiny_model())
    assert (summary.skipped, summary.done, summary.damaged_lines) == (3, count - 3, 1)
    records, damaged = read_lines(out / "manifest.jsonl")
    assert damaged == 1 and len(records) == count


def test_a_named_pipe_named_like_an_image_fails_alone_and_does_not_block(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    Image.open(gradsight.example_image_path()).resize((64, 48)).save(root / "real.png")
    os.mkfifo(root / "pipe.png")  # reading it would wait forever for a writer
    summary = run_dataset([root], tmp_path / "out", model=tiny_model())
    assert (summary.done, summary.failed) == (1, 1)
    assert summary.failures[0][0] == "pipe.png" and "regular image file" in summary.failures[0][2]


def test_a_file_that_became_unreadable_loses_its_old_map(folder, tmp_path):
    root, good = copy_folder(folder, tmp_path)
    out, rel = tmp_path / "out", good[3]
    run_dataset([root], out, model=tiny_model(), recursive=True)
    assert (out / f"{rel}.gradient.npy").exists()
    (root / rel).write_bytes(b"garbage")
    summary = run_dataset([root], out, model=tiny_model(), recursive=True)
    assert {f[0] for f in summary.failures} == {rel, "corrupt.jpg"}
    assert not (out / f"{rel}.gradient.npy").exists() and latest(out)[(rel, "gradient")]["status"] == "error"


def test_reading_the_next_batch_overlaps_the_gradient_pass(folder, tmp_path, monkeypatch):
    root, _ = folder
    batch_size, next_batch_read = 4, threading.Event()
    calls, overlapped = [], []
    real_prepare, real_compute = pipeline.prepare, pipeline.compute_batch

    def prepare(job, preprocess):
        calls.append(job)
        if len(calls) > batch_size:
            next_batch_read.set()
        return real_prepare(job, preprocess)

    def compute(loaded, arrays, method, options):
        if not overlapped:  # the first pass waits until an image of the second batch is being read
            overlapped.append(next_batch_read.wait(timeout=20))
        return real_compute(loaded, arrays, method, options)

    monkeypatch.setattr(engine, "prepare", prepare)
    monkeypatch.setattr(pipeline, "compute_batch", compute)
    summary = run_dataset([root], tmp_path / "out", model=tiny_model(), recursive=True, batch_size=batch_size,
                          workers=2)
    assert overlapped == [True] and summary.done > 2 * batch_size


def test_images_in_flight_stay_bounded_over_hundreds_of_images(tmp_path):
    root = tmp_path / "many"
    good = make_folder(root, 300, seed=2)
    summary = run_dataset([root], tmp_path / "out", model=tiny_model(), recursive=True, batch_size=4, workers=2)
    assert (summary.done, summary.failed) == (len(good), 1)
    # read-ahead 2 * max(batch, workers) = 8, plus the batch being filled: 4
    assert 4 < summary.max_in_flight <= 2 * max(4, 2) + 4


def test_dry_run_writes_nothing_and_limit_takes_the_first_images(folder, tmp_path, capsys):
    root, good = folder
    out = tmp_path / "out"
    summary = run_dataset([root], out, model=tiny_model(), recursive=True, dry_run=True, limit=5, echo=print)
    assert not out.exists()
    expected = sorted([*good, "corrupt.jpg"])[:5]
    assert [rel for rel, _ in summary.todo] == expected and summary.planned == 5
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"would compute {rel} [gradient]" for rel in expected]
    run_dataset([root], out, model=tiny_model(), recursive=True, limit=5)
    assert run_dataset([root], out, model=tiny_model(), recursive=True, dry_run=True).planned == len(good) + 1 - 5


def cli(capsys, *args) -> tuple[int, str, str]:
    code = runs_cli.main(list(map(str, args)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_exit_status_and_summary(folder, tmp_path, capsys, monkeypatch):
    root, good = folder
    monkeypatch.setattr("gradsight.runs.model.load_named", lambda name, weights=None, download=False: tiny_model())
    code, out, err = cli(capsys, "attribute", root, "--recursive", "--out", tmp_path / "o1", "--model", "tiny")
    assert code == 1 and f"{len(good)} done, 0 skipped" in out and "1 failed" in out and "corrupt.jpg" in out
    code, out, _ = cli(capsys, "attribute", root / "a" / "b", "--out", tmp_path / "o2", "--model", "tiny",
                       "--option", "target=1", "--option", "score=prob")
    assert code == 0 and "0 failed" in out
    record = manifest_lines(tmp_path / "o2")[0]
    assert record["target"] == 1 and record["options"]["score"] == "prob"


@pytest.mark.parametrize("args, words", [
    (["attribute", "{root}/nope", "--out", "{tmp}/o"], ["no such file or folder"]),
    (["attribute", "{root}", "--out", "{tmp}/o", "--method", "gradiant"], ["'gradient'"]),
    (["attribute", "{root}", "--out", "{tmp}/o", "--option", "scor=prob"], ["Did you mean 'score'"]),
    (["attribute", "{root}", "--out", "{tmp}/o", "--option", "target=7"], ["0..4"]),
    (["attribute", "{root}", "--out", "{tmp}/o", "--option", "score"], ["KEY=VALUE"]),
    (["attribute", "{root}", "{tmp}/twin", "--out", "{tmp}/o"], ["img000.png", "both"]),
    (["attribute", "{root}", "--out", "{root}"], ["the output folder itself"]),
    (["attribute", "{root}/a/b/*.gif", "--out", "{tmp}/o"], ["at least one image file"]),
    (["attribute", "{root}", "--out", "{tmp}/o", "--batch-size", "0"], ["batch_size"]),
    (["collect", "{tmp}", "--to", "{tmp}/maps.zarr"], ["manifest.jsonl"]),
    (["collect", "{tmp}", "--to", "{tmp}/maps.h5"], [".zarr", ".parquet"]),
])
def test_bad_input_is_one_line_and_exit_2(folder, tmp_path, capsys, monkeypatch, args, words):
    root, _ = folder
    (tmp_path / "twin").mkdir()
    Image.open(root / "img000.png").save(tmp_path / "twin" / "img000.png")
    monkeypatch.setattr("gradsight.runs.model.load_named", lambda name, weights=None, download=False: tiny_model())
    code, out, err = cli(capsys, *[a.format(root=root, tmp=tmp_path) for a in args])
    assert code == 2 and err.startswith("gradsight: error: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_a_second_run_on_the_same_output_folder_is_refused(folder, tmp_path):
    root, _ = folder
    out = tmp_path / "out"
    with Manifest(out / "manifest.jsonl"):
        with pytest.raises(BadInputError, match="a run in progress"):
            run_dataset([root / "a" / "b"], out, model=tiny_model())


def test_collect_zarr_and_parquet(folder, tmp_path):
    import pyarrow.parquet as pq
    import zarr
    root, good = folder
    out = tmp_path / "out"
    run_dataset([root], out, model=tiny_model(), recursive=True)
    store = collect(out, tmp_path / "maps.zarr")
    group = zarr.open_group(str(store), mode="r")["gradient"]
    assert list(group["paths"][:]) == sorted(good)
    assert group["maps"].shape == (len(good), 40, 40) and group["maps"].dtype == np.float16
    for i, rel in enumerate(sorted(good)):
        np.testing.assert_array_equal(group["maps"][i], np.load(out / f"{rel}.gradient.npy"))
    state = latest(out)
    assert list(group["prediction"][:]) == [state[(rel, "gradient")]["prediction"]["class"] for rel in sorted(good)]
    assert group.attrs["options"]["score"] == "logit" and group.attrs["model"] == "tiny-cnn"

    run_dataset([root], out, model=tiny_model(), recursive=True, limit=3, options={"score": "prob"})
    with pytest.raises(BadInputError, match="one options for every image"):
        collect(out, tmp_path / "mixed.zarr")
    assert not (tmp_path / "mixed.zarr").exists() and not list(tmp_path.glob(".mixed.zarr*"))
    table = pq.read_table(collect(out, tmp_path / "manifest.parquet")).to_pylist()
    lines = manifest_lines(out)
    assert len(table) == len(lines) and sum(row["current"] for row in table) == len(good) + 1
    assert {row["path"] for row in table if row["status"] == "error"} == {"corrupt.jpg"}


@pytest.mark.slow
def test_embedded_model_on_variants_of_the_bundled_photo(embedded, tmp_path):
    photo = Image.open(gradsight.example_image_path()).convert("RGB")
    root = tmp_path / "ouzels"
    root.mkdir()
    photo.save(root / "ouzel.png")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "flipped.jpg", quality=95)
    photo.crop((40, 20, 460, 340)).save(root / "crop.png")
    summary = run_dataset([root], tmp_path / "out", model="efficientnet_lite0", batch_size=3)
    assert (summary.done, summary.failed) == (3, 0)
    state = latest(tmp_path / "out")
    for rel in ("ouzel.png", "flipped.jpg", "crop.png"):
        record = state[(rel, "gradient")]
        assert record["prediction"]["class"] == 20 and record["prediction"]["label"] == "water ouzel, dipper"
        expected = gradsight.saliency(embedded, str(root / rel)).saliency[0]
        stored = np.load(tmp_path / "out" / f"{rel}.gradient.npy").astype(np.float32)
        np.testing.assert_allclose(stored, expected, rtol=F16_RTOL, atol=F16_ATOL + 1e-5 * expected.max())
    assert state[("ouzel.png", "gradient")]["model_weights"].startswith("embedded")


# --- every registered method in a run (issue 10 on issue 13's runner) ------------------------------------------

SMALL = {"smoothgrad.n_samples": 3, "n_steps": 4}  # n_steps: Integrated Gradients', the only method taking it


def sub_folder(folder) -> tuple[Path, list[str]]:
    root, good = folder
    return root / "a" / "b", sorted(g[4:] for g in good if g.startswith("a/b/"))


def test_registry_methods_in_a_run_equal_attribute_one_by_one(folder, tmp_path):
    part, rels = sub_folder(folder)
    model, out = tiny_model(), tmp_path / "out"
    summary = run_dataset([part], out, model=model, methods="smoothgrad,grad_cam,integrated_gradients",
                          options=SMALL, batch_size=4)
    assert (summary.done, summary.failed) == (3 * len(rels), 0)
    state = latest(out)
    preprocess = TINY_PREP.as_dict() | {"mean": [0.5] * 3, "std": [0.25] * 3}
    for rel in rels:
        for method, options in (("smoothgrad", {"n_samples": 3}), ("grad_cam", {}),
                                ("integrated_gradients", {"n_steps": 4})):
            expected = gradsight.attribute(model, str(part / rel), method=method, **options)
            record = state[(rel, method)]
            stored = np.load(out / record["map"]["file"]).astype(np.float32)
            scale = float(np.abs(expected.maps[0]).max())
            np.testing.assert_allclose(stored, expected.maps[0], rtol=F16_RTOL, atol=F16_ATOL + 1e-5 * scale)
            assert record["target"] == int(expected.targets[0]) == record["prediction"]["class"]
            assert record["map"]["stores"].startswith(f"{method}: ")
        ig = state[(rel, "integrated_gradients")]
        # every effective option, the registry's defaults written out here (the papers'), plus the run's
        assert ig["options"] == {"score": "logit", "target": "auto", "fast": True, "n_steps": 4,
                                 "rule": "gausslegendre", "baseline": "zeros", "blur_sigma": 5.0,
                                 "internal_batch_size": 16, "preprocess": preprocess}
        assert ig["effective"] == {"baseline": "zeros (model-input space)"}
        # completeness: the gap is sum(attribution) - (F(x) - F(baseline)); the map sums the channels
        expected = gradsight.attribute(model, str(part / rel), method="integrated_gradients", n_steps=4)
        gap, difference = ig["per_image"]["completeness_gap"], ig["per_image"]["score_difference"]
        assert difference == pytest.approx(float(expected.per_image["score_difference"][0]), rel=1e-5)
        assert gap == pytest.approx(float(expected.maps[0].sum(dtype=np.float64)) - difference,
                                    abs=1e-5 * (abs(difference) + 1))
        cam = state[(rel, "grad_cam")]
        # small_cnn: ... 7 conv, 8 BatchNorm, 9 ReLU, 10 global pooling: the last spatial layer is "9"
        assert cam["options"]["layer"] is None and cam["effective"]["layer"] == "9"
        assert "upsampled" in cam["map"]["stores"]
        sigma = state[(rel, "smoothgrad")]["effective"]["sigma"]
        pixels = TINY_PREP(gradsight.load_image(part / rel))
        assert sigma == pytest.approx(0.15 * float(pixels.max() - pixels.min()), rel=1e-6)  # one per image


def test_changing_one_method_option_recomputes_only_that_method(folder, tmp_path):
    part, rels = sub_folder(folder)
    model, out, count = tiny_model(), tmp_path / "out", len(rels)
    first = run_dataset([part], out, model=model, methods="gradient,integrated_gradients", options={"n_steps": 2})
    assert first.done == 2 * count
    keys = {(r["path"], r["method"]): r["key"] for r in manifest_lines(out)}
    again = run_dataset([part], out, model=model, methods="gradient,integrated_gradients",
                        options=["integrated_gradients.n_steps=3"])
    assert (again.done, again.skipped) == (count, count)
    new = manifest_lines(out)[2 * count:]
    assert {r["method"] for r in new} == {"integrated_gradients"} and {r["options"]["n_steps"] for r in new} == {3}
    assert all(r["key"] != keys[(r["path"], r["method"])] for r in new)
    # a default given explicitly is the same option: nothing to do
    same = run_dataset([part], out, model=model, methods="gradient,integrated_gradients",
                       options={"n_steps": 3, "rule": "gausslegendre", "score": "logit"})
    assert (same.done, same.skipped) == (0, 2 * count)


@pytest.mark.parametrize("args, words", [
    (["--method", "gradient,integrated_gradients", "--option", "n_steps=0"], ["n_steps", ">= 1"]),
    (["--method", "grad_cam", "--option", "layer=nope"], ["'nope'"]),
    (["--method", "smoothgrad", "--option", "noise_level=-1"], ["noise_level", ">= 0"]),
    (["--method", "gradient,grad_cam", "--option", "window=3"], ["window", "grad_cam: layer"]),
    (["--method", "smoothgrd"], ["'smoothgrad'"]),
    (["--method", "integrated_gradients", "--option", "gradient.score=prob"], ["METHOD.KEY"]),
    (["--method", "gradient", "--option", "fast=maybe"], ["true or false"]),
])
def test_a_bad_method_option_exits_2_before_any_image_is_read(folder, tmp_path, capsys, monkeypatch, args, words):
    root, _ = folder
    monkeypatch.setattr("gradsight.runs.model.load_named", lambda name, weights=None, download=False: tiny_model())
    monkeypatch.setattr(engine, "prepare", lambda *a: pytest.fail("an image was read"))
    code, out, err = cli(capsys, "attribute", root, "-r", "--out", tmp_path / "o", "--model", "tiny", *args)
    assert code == 2 and err.startswith("gradsight: error: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_a_method_refusing_its_options_mid_run_stops_the_run_and_marks_no_image_failed(folder, tmp_path,
                                                                                       monkeypatch):
    part, _ = sub_folder(folder)
    out = tmp_path / "out"
    monkeypatch.setattr(engine, "check_methods", lambda loaded, names, options: None)  # no check up front
    with pytest.raises(BadInputError, match="n_steps: expected a whole number >= 1, got 0"):
        run_dataset([part], out, model=tiny_model(), methods="gradient,integrated_gradients",
                    options={"n_steps": 0}, batch_size=4)
    assert not [r for r in manifest_lines(out) if r["status"] != "ok"]  # gradient maps written, nothing failed


def test_gradient_maps_are_the_adapters_gradient_bit_for_bit():
    from gradsight.adapters.discovery import adapter_for
    from gradsight.runs.compute import compute_batch, run_options

    model = tiny_model()
    x = np.random.default_rng(3).standard_normal((3, 40, 40, 3)).astype(np.float32)
    for raw, targets, score, fast in (({}, [None] * 3, "logit", True), (["score=prob", "target=2", "fast=false"],
                                                                          [2] * 3, "prob", False)):
        options = run_options(["gradient"], raw)["gradient"]
        out = adapter_for(model.module).score_gradient(model.module, x, targets, score, fast)
        for i, result in enumerate(compute_batch(model, x, "gradient", options)):
            assert np.array_equal(result.map, np.abs(out.gradient[i]).max(axis=-1)) and result.map.dtype == np.float32
            assert np.array_equal(result.logits, out.logits[i]) and result.target == out.targets[i]


def test_signed_maps_get_a_blue_white_red_png(folder, tmp_path):
    from gradsight.rendering.attribution import to_rgb

    part, rels = sub_folder(folder)
    out = tmp_path / "out"
    run_dataset([part], out, model=tiny_model(), methods="integrated_gradients", options={"n_steps": 2}, png=True,
                float32=True, limit=2)
    record = latest(out)[(rels[0], "integrated_gradients")]
    values = np.load(out / record["map"]["file"])
    assert values.min() < 0 < values.max() and record["map"]["min"] == pytest.approx(float(values.min()))
    assert record["png"]["normalisation"].startswith("RGB, blue-white-red")
    np.testing.assert_array_equal(np.asarray(Image.open(out / record["png"]["file"])), to_rgb(values))


def test_collect_keeps_each_methods_diagnostics_and_resolved_options(folder, tmp_path):
    import pyarrow.parquet as pq
    import zarr

    part, rels = sub_folder(folder)
    out = tmp_path / "out"
    run_dataset([part], out, model=tiny_model(), methods="integrated_gradients,grad_cam", options={"n_steps": 2})
    state = latest(out)
    group = zarr.open_group(str(collect(out, tmp_path / "maps.zarr")), mode="r")
    gaps = [state[(rel, "integrated_gradients")]["per_image"]["completeness_gap"] for rel in rels]
    np.testing.assert_array_equal(group["integrated_gradients"]["per_image_completeness_gap"][:], gaps)
    assert "per_image_completeness_gap" not in group["grad_cam"]
    table = pq.read_table(collect(out, tmp_path / "manifest.parquet")).to_pylist()
    assert {json.loads(row["effective"])["layer"] for row in table if row["method"] == "grad_cam"} == {"9"}


def test_a_keras_model_runs_like_a_torch_one(folder, tmp_path):
    """The runner is framework-free: a Keras classifier's maps equal gradsight.attribute's (to float16)."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((40, 40, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv2")(h)
    logits = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(h))
    model = LoadedModel(keras.Model(x, logits), ModelSpec("tiny-keras", "keras", TINY_PREP))
    part, rels = sub_folder(folder)
    out = tmp_path / "out"
    summary = run_dataset([part], out, model=model, methods="gradient,grad_cam", batch_size=2)
    assert (summary.done, summary.failed) == (2 * len(rels), 0)
    state = latest(out)
    for rel in rels:
        for method in ("gradient", "grad_cam"):
            expected = gradsight.attribute(model, str(part / rel), method=method).maps[0]
            stored = np.load(out / state[(rel, method)]["map"]["file"]).astype(np.float32)
            assert np.abs(expected).max() > 0  # a live map, so that equality says something
            np.testing.assert_allclose(stored, expected, rtol=F16_RTOL,
                                       atol=F16_ATOL + 1e-5 * float(np.abs(expected).max()))
        assert state[(rel, "grad_cam")]["effective"]["layer"] == "conv2"
