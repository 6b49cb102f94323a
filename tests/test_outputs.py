"""Output files: one set per input, names that never collide, bounded memory for big photos."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gradsight


def output_stems(sources):
    from gradsight.rendering.files import output_stems as stems

    return stems(sources)


def photo_file(path: Path, seed: int, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_names_keep_the_stem_then_add_the_extension_then_folders(tmp_path):
    here = tmp_path.name
    sources = [str(tmp_path / "a.png"), str(tmp_path / "a.jpg"), str(tmp_path / "a_2.png"),
               str(tmp_path / "x" / "a.png"), str(tmp_path / "y" / "a.png"), str(tmp_path / "b.png"), "<array>"]
    assert output_stems(sources) == [f"{here}_a_png", "a_jpg", "a_2", "x_a_png", "y_a_png", "b", "input6"]


def test_a_made_name_never_takes_another_inputs_own_name(tmp_path):
    # a.png's extended name would be a_png, which is the natural name of a_png.png: a.png must move on.
    sources = [str(tmp_path / "a.png"), str(tmp_path / "a.jpg"), str(tmp_path / "a_png.png")]
    assert output_stems(sources) == [f"{tmp_path.name}_a_png", "a_jpg", "a_png"]
    # names differing only in case collide on macOS and Windows file systems
    upper = output_stems([str(tmp_path / "A.png"), str(tmp_path / "a.jpg")])
    assert upper == ["A_png", "a_jpg"]
    # the same file twice: the second gets a number, which must not be another input's name either
    twice = output_stems([str(tmp_path / "a.png"), str(tmp_path / "a.png"), str(tmp_path / "a_2.jpg")])
    assert twice == ["a", "a_3", "a_2"]
    assert output_stems(["<stdin>", "<PIL image>", str(tmp_path / "input1.png")]) == ["stdin", "input1",
                                                                                        "input1_png"]


def test_colliding_names_write_every_input_apart(cnn, tmp_path):
    # The case (a.png a.jpg a_2.png wrote 8 files for 3 inputs) plus x/a.png vs y/a.png.
    paths = [photo_file(tmp_path / name, seed) for seed, name in
             enumerate(["a.png", "a.jpg", "a_2.png", "x/a.png", "y/a.png"])]
    result = gradsight.saliency(cnn, paths)
    written = gradsight.save_saliency(result, tmp_path / "out")
    assert len(written) == len(set(written)) == 4 * len(paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)
    records = [json.loads(p.read_text()) for p in written if p.suffix == ".json"]
    assert sorted(r["source"] for r in records) == sorted(str(p) for p in paths)
    for record in records:
        i = [str(p) for p in paths].index(record["source"])
        stem = record["output_name"]
        assert stem == output_stems([str(p) for p in paths])[i]
        assert record["files"] == sorted([f"{stem}.json", f"{stem}_figure.png", f"{stem}_saliency.npy",
                                          f"{stem}_saliency.png"])
        # each input's map is its own, not another input's that overwrote it
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{stem}_saliency.npy"), result.saliency[i])


def big_photo(path: Path, size=(6000, 4000)) -> Path:
    """A large photo that compresses to a small PNG (a smooth gradient with a bright square)."""
    x = np.linspace(0, 255, size[0], dtype=np.float32)
    y = np.linspace(0, 255, size[1], dtype=np.float32)
    pixels = np.empty((size[1], size[0], 3), np.uint8)
    pixels[..., 0] = x[None, :].astype(np.uint8)
    pixels[..., 1] = y[:, None].astype(np.uint8)
    pixels[..., 2] = 90
    pixels[1500:2500, 2500:3500] = 250
    Image.fromarray(pixels).save(path, compress_level=1)
    return path


def figure_peak_bytes(result, path: Path) -> int:
    tracemalloc.start()
    try:
        gradsight.saliency_figure(result).savefig(path, dpi=100)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_results_and_figures_keep_a_bounded_copy_of_a_big_photo(cnn, tmp_path):
    result = gradsight.saliency(cnn, big_photo(tmp_path / "big.png"))
    photo = result.photos[0]
    assert max(photo.size) == 1024 and photo.size == (1024, round(1024 * 4000 / 6000))
    # the geometry keeps the photo's real size: on_original maps onto all 6000 x 4000 pixels
    assert result.geometries[0].original_size == (6000, 4000)
    assert result.on_original(0).shape == (4000, 6000)
    figure = gradsight.saliency_figure(result)
    assert figure.axes[0].get_images()[0].get_array().shape[:2] == (683, 1024)
    # Drawing the 24-megapixel photo's figure costs what drawing a 1024 x 683 photo's figure costs (measured
    # after a first figure, so matplotlib's one-off caches are not counted); before, the map alone on the full
    # photo was 6000 * 4000 * 4 bytes = 96 MB.
    small = gradsight.saliency(cnn, big_photo(tmp_path / "small.png", size=(1024, 683)))
    figure_peak_bytes(small, tmp_path / "warm-up.png")
    baseline = figure_peak_bytes(small, tmp_path / "small_figure.png")
    peak = figure_peak_bytes(result, tmp_path / "big_figure.png")
    assert peak < 1.05 * baseline + 1e6, (peak, baseline)


def test_figure_of_a_big_photo_shows_the_map_where_the_crop_was(cnn, tmp_path):
    # The overlay on the display copy equals the full-size map shrunk to the same size (within resampling).
    path = big_photo(tmp_path / "big.png", size=(3000, 2000))
    result = gradsight.saliency(cnn, path)
    figure = gradsight.saliency_figure(result)
    shown = np.asarray(figure.axes[1].get_images()[0].get_array(), dtype=np.float64)
    full = result.on_original(0)
    small = np.asarray(Image.fromarray(full).resize((1024, 683), Image.Resampling.BOX), dtype=np.float64)
    top = np.percentile(full, 99)
    small = np.clip(small / top, 0, 1)
    assert shown.shape == small.shape
    assert np.corrcoef(shown.ravel(), small.ravel())[0, 1] > 0.95


def test_sidecar_records_input_kind_and_output_name(cnn, tmp_path):
    path = photo_file(tmp_path / "p.png", 0)
    written = gradsight.save_saliency(gradsight.saliency(cnn, path), tmp_path / "o")
    record = json.loads(next(p for p in written if p.suffix == ".json").read_text())
    assert record["input_kind"] == "photo" and record["output_name"] == "p" and record["orientation"] is None


@pytest.mark.parametrize("where", ["file", "missing parent under a file"])
def test_unwritable_output_folder_is_one_clear_error(cnn, tmp_path, where):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    out = blocker if where == "file" else blocker / "sub"
    result = gradsight.saliency(cnn, photo_file(tmp_path / "p.png", 0))
    with pytest.raises(gradsight.BadInputError, match="output folder"):
        gradsight.save_saliency(result, out)
    assert blocker.read_text() == "a file"
