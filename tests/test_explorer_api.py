"""The explorer's HTTP API (Starlette's TestClient): every endpoint, numbers equal to gradsight's Python API and
to the seed CNN's closed form, the Host and Origin guards, CSP, bad input, and the user's model left untouched.

Closed form of the seed CNN's L6 (kernels 5,5,3,3,3,3; strides 1,2,1,2,1,2): r = 1 + 4 + 4*1 + 2*2 + 2*2 + 2*4
+ 2*4 = 33, S = 8; P = 2 + 1*1 + 1*2 + 0*2 + 1*4 + 0*4 = 9 with TF 'same' padding, 2 + 2 + 2 + 2 + 4 + 4 = 16
with PyTorch's k//2. Unit u sees rows u*S - P .. u*S - P + r - 1, clipped to 0..127.
"""

from __future__ import annotations

import io
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import small_cnn

import gradsight

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from gradsight.adapters.torch import incremental  # noqa: E402
from gradsight.explorer.app import create_app  # noqa: E402
from gradsight.explorer.session import Session  # noqa: E402
from gradsight.explorer.uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS  # noqa: E402

BASE = "http://127.0.0.1:8765"
L6 = {"model": "seed-cnn", "image": 0, "layer": "L6"}


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _photo(width=64, height=48) -> Image.Image:
    """A photo with structure in every channel (so greyscale conversion and cropping matter)."""
    rows, cols = np.mgrid[0:height, 0:width]
    rgb = np.stack([rows * 255 // height, cols * 255 // width, (rows * cols) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("explorer") / "stripes.png"
    _photo(80, 60).save(path)
    return path


@pytest.fixture(scope="module")
def user_model():
    return small_cnn(seed=3)


@pytest.fixture(scope="module")
def session(user_model, photo_path):
    return Session(user_model, [photo_path])


@pytest.fixture(scope="module")
def client(session):
    return TestClient(create_app(session), base_url=BASE)


def _ok(response):
    assert response.status_code == 200, response.text
    return response


def _npy(response) -> np.ndarray:
    return np.load(io.BytesIO(_ok(response).content), allow_pickle=False)


# -- page, assets, guards -------------------------------------------------------------------------------------------


def test_the_page_and_its_assets_are_served_with_csp_and_name_no_other_site(client):
    page = _ok(client.get("/"))
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/static/explorer.js"' in page.text
    assert "<style" not in page.text and " style=" not in page.text and "onclick" not in page.text  # CSP: no inline
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text)  # no inline scripts
    for asset, kind in (("/static/explorer.js", "javascript"), ("/static/explorer.css", "text/css"),
                        ("/static/favicon.svg", "image/svg+xml"), ("/favicon.ico", "image/svg+xml")):
        response = _ok(client.get(asset))
        assert kind in response.headers["content-type"]
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        # Offline: no CDN, web font or analytics address anywhere (the SVG namespace is a name, not a request).
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+", response.text)) - {"http://www.w3.org"}
        assert urls == set(), (asset, urls)
    assert "@import" not in client.get("/static/explorer.css").text
    assert client.get("/static/../session.py").status_code == 404


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.example", "localhost.evil",
                                  "10.0.0.7:8765", "[::2]:80", ""])
def test_requests_naming_another_host_are_refused(client, host):
    response = client.get("/api/models", headers={"host": host})
    assert response.status_code == 403
    assert "DNS rebinding" in response.json()["error"]
    assert response.headers["content-security-policy"].startswith("default-src 'self'")


@pytest.mark.parametrize("host", ["localhost", "localhost:1", "127.0.0.1:8765", "[::1]:8765", "LOCALHOST:80"])
def test_loopback_hosts_with_any_port_are_served(client, host):
    _ok(client.get("/api/models", headers={"host": host}))


def test_a_post_from_another_site_is_refused(client):
    body = _png_bytes(_photo())
    refused = client.post("/api/upload", content=body, headers={"origin": "http://evil.example"})
    assert refused.status_code == 403 and "origin" in refused.json()["error"]
    count = len(client.get("/api/images").json()["images"])
    same = client.post("/api/upload", content=body, headers={"origin": BASE}, params={"name": "a.png"})
    assert _ok(same).json()["index"] == count


def test_lists_give_keys_and_indices_never_paths(client, photo_path, session):
    models = _ok(client.get("/api/models")).json()
    keys = [m["key"] for m in models["models"]]
    assert keys[0] == models["default"] == "Sequential (given)"
    assert keys[1:] == ["seed-cnn", "seed-cnn-torch", "efficientnet_lite0", "resnet50"]
    images = _ok(client.get("/api/images")).json()["images"]
    assert [i["index"] for i in images] == list(range(len(images)))
    assert images[0]["kind"] == "random" and images[1]["label"].startswith("ouzel.png")
    assert images[2]["label"] == "stripes.png (80x60)"
    assert str(photo_path.parent) not in str(images)


# -- numbers -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, padding", [("seed-cnn", (2, 1, 1, 0, 1, 0)), ("seed-cnn-torch", (2, 2, 1, 1, 1, 1))])
def test_the_layer_table_equals_receptive_field_and_the_closed_form(client, model, padding):
    table = _ok(client.get("/api/layers", params={"model": model})).json()
    report = gradsight.receptive_field(model)
    rows = {row["name"]: row for row in table["layers"]}
    assert [r for r in rows] == [layer.name for layer in report.rows(1)]
    kernels, strides = (5, 5, 3, 3, 3, 3), (1, 2, 1, 2, 1, 2)
    size, stride, pad = 1, 1, 0
    for i, (k, s, p) in enumerate(zip(kernels, strides, padding), start=1):
        size, pad, stride = size + (k - 1) * stride, pad + p * stride, stride * s
        row = rows[f"L{i}"]
        assert row == {**report[f"L{i}"].as_dict(), "spatial": True, "grid": list(report[f"L{i}"].spatial_shape),
                       "channels": report[f"L{i}"].output_shape[0]}
        assert (row["kernel"], row["stride"], row["dilation"]) == ([k, k], [s, s], [1, 1])
        assert (row["rf_size"], row["effective_stride"], row["effective_padding"]) == ([size] * 2, [stride] * 2,
                                                                                        [pad] * 2)
    assert (size, stride, pad) == (33, 8, 9 if model == "seed-cnn" else 16)
    assert rows["L6"]["output_shape"] == [64, 16, 16] and rows["head"]["rf_size"] == "global"
    assert (table["default_layer"], table["default_unit"], table["classifier"]) == ("L6", [0, 0, 0], False)


@pytest.mark.parametrize("model, unit, rect, unclipped", [
    ("seed-cnn", (0, 0, 0), ((0, 23), (0, 23)), ((0 - 9, 0 - 9 + 32), (-9, 23))),
    ("seed-cnn-torch", (0, 0, 0), ((0, 16), (0, 16)), ((0 - 16, 0 - 16 + 32), (-16, 16))),
    ("seed-cnn", (5, 9, 7), ((5 * 8 - 9, 5 * 8 - 9 + 32), (9 * 8 - 9, 9 * 8 - 9 + 32)), None),
    ("seed-cnn", (15, 15, 63), ((15 * 8 - 9, 127), (111, 127)), ((111, 111 + 32), (111, 143))),
])
def test_a_unit_equals_node_gradient_and_the_closed_form(client, model, unit, rect, unclipped):
    params = {**L6, "model": model, "x": unit[0], "y": unit[1], "c": unit[2]}
    view = _ok(client.get("/api/unit", params=params)).json()
    expected = gradsight.node_gradient(model, "L6", unit)  # default input: uniform [0, 1), seed 0
    assert view["unit"] == list(unit) and view["grid"] == [16, 16] and view["channels"] == 64
    assert tuple(map(tuple, view["rect"])) == rect == expected.rect
    assert tuple(map(tuple, view["unclipped"])) == (unclipped or rect)
    support = expected.support_box()
    assert (tuple(map(tuple, view["support"])) if view["support"] else None) == support
    assert view["agreement"] == ("agree" if support == rect else "inside" if support else "dead")
    assert view["value"] == pytest.approx(float(expected.values[0]), rel=1e-6, abs=1e-9)
    gradient = _npy(client.get("/api/unit.npy", params=params))
    np.testing.assert_allclose(gradient, expected.gradient, rtol=1e-6, atol=1e-9)
    assert view["gradient_nonzero"] == int(np.count_nonzero(np.abs(expected.gradient).sum(-1)))
    picture = Image.open(io.BytesIO(_ok(client.get("/api/unit.png", params=params)).content))
    assert picture.size == (128, 128) and picture.mode == "RGB"
    again = _ok(client.get("/api/unit", params=params)).json()
    assert again["cached"] and again["digest"] == view["digest"]


def test_the_gradient_picture_is_a_log_scale_with_exact_zeros_in_their_own_colour(client):
    from gradsight.explorer.render import LUT, ZERO_RGB

    params = {**L6, "x": 0, "y": 0, "c": 0}
    gradient = np.abs(_npy(client.get("/api/unit.npy", params=params))).sum(-1)
    picture = np.asarray(Image.open(io.BytesIO(client.get("/api/unit.png", params=params).content)))
    assert (picture[gradient == 0] == ZERO_RGB).all() and (gradient == 0).sum() == 128 * 128 - 24 * 24
    top = np.unravel_index(np.argmax(gradient), gradient.shape)
    assert tuple(picture[top]) == tuple(LUT[255])
    # A value 10^-3 of the maximum sits half-way up the six decades: index round(255 * 3/6) = 128 (or next to it).
    level = np.round(255 * (np.log10(gradient[gradient > 0] / gradient.max()) + 6) / 6).clip(0, 255).astype(int)
    assert (picture[gradient > 0] == LUT[level]).all()


def test_a_click_on_the_picture_picks_the_unit_centred_nearest(client):
    # Unit u of L6 ('same') is centred at u*8 - 9 + (33 - 1)/2 = 8u + 7: pixel 60 -> u = (60 - 7)/8 = 6.6 -> 7.
    view = _ok(client.get("/api/unit", params={**L6, "row": 60, "col": 100.4, "c": 2})).json()
    assert view["unit"] == [7, 12, 2] == [*gradsight.receptive_field("seed-cnn")["L6"].unit_at((60, 100.4)), 2]
    assert view["centre"] == [8 * 7 + 7, 8 * 12 + 7]


def test_growth_lists_the_nested_fields_up_to_a_layer(client):
    data = _ok(client.get("/api/growth", params={"model": "seed-cnn", "layer": "L4", "row": 63, "col": 31})).json()
    report = gradsight.receptive_field("seed-cnn")
    assert [g["layer"] for g in data["layers"]] == ["L1", "L2", "L3", "L4"]
    for item, size in zip(data["layers"], (5, 9, 13, 17)):
        field = report[item["layer"]]
        assert item["unit"] == list(field.unit_at((63, 31)))
        assert item["rect"] == [list(r) for r in field.rect(tuple(item["unit"]))]
        assert item["rf_size"] == [size, size]
    spans = [g["rect"] for g in data["layers"]]
    assert all(o[0][0] <= i[0][0] <= i[0][1] <= o[0][1] and o[1][0] <= i[1][0] <= i[1][1] <= o[1][1]
               for i, o in zip(spans, spans[1:]))


def test_input_of_a_photo_on_the_seed_cnn_is_the_photo_in_grey_fitted_to_128(client):
    # stripes.png is 80x60: the shorter side becomes 128, the width int(128 * 80 / 60) = 170, crop left round(21).
    info = _ok(client.get("/api/input", params={"model": "seed-cnn", "image": 2})).json()
    assert info["shape"] == [128, 128, 1]
    grey = _photo(80, 60).convert("L").convert("RGB").resize((170, 128), Image.Resampling.BILINEAR)
    expected = np.asarray(grey.crop((21, 0, 149, 128)), np.float32)[..., :1] / np.float32(255)
    view = _ok(client.get("/api/unit", params={**L6, "image": 2, "x": 4, "y": 4, "c": 1})).json()
    oracle = gradsight.node_gradient("seed-cnn", "L6", (4, 4, 1), expected)
    assert view["value"] == pytest.approx(float(oracle.values[0]), rel=1e-5)
    shown = np.asarray(Image.open(io.BytesIO(_ok(client.get("/api/input.png", params={"model": "seed-cnn",
                                                                                       "image": 2})).content)))
    np.testing.assert_array_equal(shown[..., 0], np.rint(expected[..., 0] * 255).astype(np.uint8))


def test_the_users_classifier_predicts_and_explains_like_the_python_api(client, user_model, ouzel_path,
                                                                        monkeypatch):
    key = "Sequential (given)"
    table = _ok(client.get("/api/layers", params={"model": key})).json()
    assert table["classifier"] and table["methods"][0]["name"] == "gradient"
    prediction = _ok(client.get("/api/predict", params={"model": key, "image": 1})).json()
    expected = gradsight.saliency(user_model, ouzel_path)
    assert [(p["class"], p["name"]) for p in prediction["top5"]] == [(c, n) for c, n, _ in expected.top_k(0, 5)]
    assert [p["probability"] for p in prediction["top5"]] == pytest.approx([p for *_, p in expected.top_k(0, 5)])
    saliency = _npy(client.get("/api/saliency.npy", params={"model": key, "image": 1}))
    np.testing.assert_allclose(saliency, expected.saliency[0], rtol=1e-5, atol=1e-7)
    _ok(client.get("/api/saliency.png", params={"model": key, "image": 1}))
    # Any method of the attribution family: here the signed input x gradient, drawn red/blue.
    assert {"gradient", "input_x_gradient", "integrated_gradients"} <= {m["name"] for m in table["methods"]}
    signed = {"model": key, "image": 1, "method": "input_x_gradient"}
    assert _ok(client.get("/api/predict", params=signed)).json()["display"] == "sum"
    expected_ixg = gradsight.attribute(user_model, ouzel_path, method="input_x_gradient")
    np.testing.assert_allclose(_npy(client.get("/api/saliency.npy", params=signed)), expected_ixg.maps[0],
                               rtol=1e-5, atol=1e-7)
    colours = np.asarray(Image.open(io.BytesIO(_ok(client.get("/api/saliency.png", params=signed)).content)))
    reddest = np.unravel_index(np.argmax(expected_ixg.maps[0]), expected_ixg.maps[0].shape)
    bluest = np.unravel_index(np.argmin(expected_ixg.maps[0]), expected_ixg.maps[0].shape)
    assert tuple(colours[reddest]) == (255, 0, 0) and tuple(colours[bluest]) == (0, 0, 255)
    # Occlusion from the server's worker threads: the incremental passes trace the folded copy there (first
    # here, before any call from the main thread), and the map is the Python API's.
    traced_in = []

    def spy(clone, trace=incremental._trace):
        traced_in.append(threading.current_thread() is threading.main_thread())
        return trace(clone)

    monkeypatch.setattr(incremental, "_trace", spy)
    occluded = {"model": key, "image": 1, "method": "occlusion"}
    served = _npy(client.get("/api/saliency.npy", params=occluded))
    assert traced_in == [False]
    expected_occlusion = gradsight.attribute(user_model, ouzel_path, method="occlusion")
    np.testing.assert_allclose(served, expected_occlusion.maps[0], rtol=1e-5, atol=1e-6)
    # A unit on the photo: the input is the model's own preprocessing of it.
    params = {"model": key, "image": 1, "layer": "7", "x": 20, "y": 33, "c": 4}
    view = _ok(client.get("/api/unit", params=params)).json()
    loaded = gradsight.LoadedModel(user_model, gradsight.ModelSpec("net", "torch", expected.preprocess))
    inputs = expected.preprocess(gradsight.load_image(ouzel_path))
    oracle = gradsight.node_gradient(loaded, "7", (20, 33, 4), inputs)
    np.testing.assert_allclose(_npy(client.get("/api/unit.npy", params=params)), oracle.gradient, rtol=1e-5,
                               atol=1e-8)
    assert view["rect"] == [list(r) for r in oracle.rect]
    # Exports carry the method shown: its top-5, options and a third panel with its map.
    exported = _ok(client.get("/api/export.json", params={**params, "method": "input_x_gradient"})).json()
    assert exported["prediction"]["method"] == "input_x_gradient"
    assert exported["prediction"]["top5"] == prediction["top5"] and exported["unit"]["rect"] == view["rect"]
    picture = Image.open(io.BytesIO(_ok(client.get("/api/export.png", params={**params, "method": "gradient"}))
                                    .content))
    three_panels = 3 * (224 + 2 * 28) * 2 + 4 * 12  # scale ceil(384 / 280) = 2, a 28-pixel margin, 12-pixel gaps
    assert picture.width == three_panels


@pytest.mark.slow
def test_the_embedded_classifier_finds_the_ouzel(client, ouzel_path):
    prediction = _ok(client.get("/api/predict", params={"model": "efficientnet_lite0", "image": 1})).json()
    expected = gradsight.saliency("efficientnet_lite0", ouzel_path)
    assert prediction["top5"][0]["class"] == 20 == expected.top_k(0, 1)[0][0]
    assert prediction["top5"][0]["probability"] == pytest.approx(expected.top_k(0, 1)[0][2], rel=1e-5)
    saliency = _npy(client.get("/api/saliency.npy", params={"model": "efficientnet_lite0", "image": 1}))
    np.testing.assert_allclose(saliency, expected.saliency[0], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_resnet50_without_weights_runs_with_random_weights_and_says_so(client, session):
    table = _ok(client.get("/api/layers", params={"model": "resnet50"})).json()
    assert "random weights" in table["note"] and not table["classifier"] and table["methods"] == []
    refused = client.get("/api/predict", params={"model": "resnet50", "image": 1})
    assert refused.status_code == 400 and refused.json()["error"].startswith("model 'resnet50': expected a classifier")
    assert "random weights (architecture only)" in refused.json()["error"]
    layer3 = next(row for row in table["layers"] if row["name"] == "layer3")
    # ResNet50 layer3: r = 267, S = 16, P = 133; unit (0, 0) sees -133..133, clipped to 0..133.
    assert (layer3["rf_size"], layer3["effective_stride"], layer3["effective_padding"]) == ([267] * 2, [16] * 2,
                                                                                            [133] * 2)
    params = {"model": "resnet50", "image": 1, "layer": "layer3", "x": 0, "y": 0, "c": 5}
    view = _ok(client.get("/api/unit", params=params)).json()
    assert view["rect"] == [[0, 133], [0, 133]] and view["unclipped"] == [[-133, 133], [-133, 133]]
    network = session.entry("resnet50").network  # the explorer's own random weights
    inputs = session.prepared("resnet50", 1).array
    oracle = gradsight.node_gradient(network, "layer3", (0, 0, 5), inputs)
    np.testing.assert_allclose(_npy(client.get("/api/unit.npy", params=params)), oracle.gradient, rtol=1e-5,
                               atol=1e-7 * float(np.abs(oracle.gradient).max()))


# -- exports -------------------------------------------------------------------------------------------------------


def test_exports_hold_the_numbers_shown_and_draw_the_rectangle_where_it_is(client):
    params = {**L6, "x": 5, "y": 4, "c": 0}
    view = _ok(client.get("/api/unit", params=params)).json()
    exported = _ok(client.get("/api/export.json", params=params))
    assert "attachment" in exported.headers["content-disposition"]
    data = exported.json()
    assert data["unit"]["rect"] == view["rect"] == [[5 * 8 - 9, 5 * 8 - 9 + 32], [4 * 8 - 9, 4 * 8 - 9 + 32]]
    assert data["unit"]["value"] == view["value"] and data["layer"]["name"] == "L6"
    assert data["input"]["shape"] == [128, 128, 1] and data["model"]["key"] == "seed-cnn"
    picture = np.asarray(Image.open(io.BytesIO(_ok(client.get("/api/export.png", params=params)).content)))
    # First panel: the 128-pixel input on a 16-pixel margin, enlarged ceil(384 / 160) = 3 times.
    scale, margin = 3, 16
    grey = np.all(picture == (64, 64, 64), axis=-1)
    top = np.argmax(grey.sum(axis=1) >= 160 * scale)  # the panel's first row: a whole row of margin
    left = np.argmax(grey[top])
    panel = picture[top:top + 160 * scale, left:left + 160 * scale]
    cyan, pink = np.all(panel == (0, 229, 255), axis=-1), np.all(panel == (255, 64, 160), axis=-1)
    # The measured support (pink, 1 pixel) is drawn over the analytic rectangle's outer edge (cyan, 3 pixels).
    expected = ((31 + margin) * scale, (63 + 1 + margin) * scale, (23 + margin) * scale, (55 + 1 + margin) * scale)
    for mask in (cyan | pink, pink):
        rows, cols = np.nonzero(mask)
        assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == expected
    assert view["support"] == view["rect"]


# -- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, params, start", [
    ("/api/unit", {**L6, "x": 16, "y": 0, "c": 0}, "unit of layer 'L6': expected a position in 0..15 x 0..15"),
    ("/api/unit", {**L6, "x": 0, "y": 0, "c": 64}, "channel of layer 'L6': expected 0..63, got 64"),
    ("/api/unit", {**L6, "layer": "L7", "x": 0, "y": 0}, "unknown layer 'L7'"),
    ("/api/unit", {**L6, "layer": "head", "x": 0, "y": 0}, "layer 'head': expected a layer with a spatial"),
    ("/api/unit", {**L6, "image": 99, "x": 0, "y": 0}, "image index: expected an index in 0.."),
    ("/api/unit", {**L6, "image": "../../etc/passwd", "x": 0, "y": 0}, "query parameter 'image': expected a whole"),
    ("/api/unit", {**L6, "x": "one", "y": 0}, "query parameter 'x': expected a whole number, got 'one'"),
    ("/api/unit", {**L6, "row": "nan", "col": 3}, "query parameter 'row': expected a finite number"),
    ("/api/unit", {**L6, "row": 500, "col": 3}, "point: expected an input pixel"),
    ("/api/unit", {"image": 0, "layer": "L6", "x": 0, "y": 0}, "query parameter 'model': expected a value"),
    ("/api/layers", {"model": "seed_cnn"}, "unknown model 'seed_cnn'"),
    ("/api/layers", {"model": "/etc/passwd"}, "unknown model '/etc/passwd'"),
    ("/api/layers", {"model": "seed-cnn", "depth": 9}, "depth: expected 1..4"),
    ("/api/predict", {"model": "seed-cnn", "image": 0}, "model 'seed-cnn': expected a classifier"),
    ("/api/predict", {"model": "Sequential (given)", "image": 0, "method": "magic"},
     "unknown attribution method 'magic'"),
    ("/api/growth", {"model": "seed-cnn", "layer": "L6.conv", "row": 1, "col": 1}, "layer 'L6.conv': expected a"),
])
def test_bad_input_gets_one_clear_error_and_the_server_keeps_serving(client, path, params, start):
    response = client.get(path, params=params)
    assert response.status_code == 400
    message = response.json()["error"]
    assert message.startswith(start), message
    assert "Traceback" not in message and "\n" not in message
    _ok(client.get("/api/unit", params={**L6, "x": 1, "y": 2, "c": 0}))


@pytest.mark.parametrize("body, start", [
    (b"", "upload 'bad.png': expected an image file (PNG, JPEG, GIF, BMP, TIFF or WebP), got an empty file"),
    (b"just some notes\n", "upload 'bad.png': expected an image file (PNG, JPEG, GIF, BMP, TIFF or WebP), got data"),
    (_png_bytes(_photo())[:200], "upload 'bad.png': expected a complete image file, got a damaged file"),
    (_png_bytes(_photo(8, 40)), "image 'bad.png': expected at least 16x16 pixels, got 8x40"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "upload 'bad.png': expected an image file"),
])
def test_bad_uploads_are_refused_with_one_message_and_nothing_is_added(client, body, start):
    count = len(client.get("/api/images").json()["images"])
    response = client.post("/api/upload", content=body, params={"name": "/home/me/bad.png"})
    assert response.status_code == 400
    assert response.json()["error"].startswith(start), response.json()["error"]
    assert len(client.get("/api/images").json()["images"]) == count


def test_uploads_are_capped_in_bytes_before_reading_and_in_pixels_before_decoding(client):
    big = client.post("/api/upload", content=b"\0" * (MAX_UPLOAD_BYTES + 1), params={"name": "big.png"})
    assert big.status_code == 413 and big.json()["error"].startswith("upload: expected at most 10 MiB")
    # 5000 x 4000 = 20,000,000 pixels of one colour: a small file, refused from its header alone.
    wide = _png_bytes(Image.new("L", (5000, 4000)))
    assert len(wide) < MAX_UPLOAD_BYTES
    response = client.post("/api/upload", content=wide, params={"name": "wide.png"})
    assert response.status_code == 400
    assert response.json()["error"] == (f"upload 'wide.png': expected at most {MAX_UPLOAD_PIXELS:,} pixels, got "
                                         "5000x4000 = 20,000,000 pixels. Downscale the photo first.")


def test_an_upload_is_decoded_in_memory_and_becomes_an_image_index(client):
    body = _png_bytes(_photo(64, 48).convert("L"))
    data = _ok(client.post("/api/upload", content=body, params={"name": "C:\\photos\\grey.png"})).json()
    assert data["label"].startswith("upload ") and data["label"].endswith(": grey.png (64x48, from L (greyscale "
                                                                          "repeated over R, G, B))")
    listed = client.get("/api/images").json()["images"]
    assert listed[data["index"]] == {k: data[k] for k in ("index", "label", "kind")}
    # 64x48 -> height 128, width int(128 * 64 / 48) = 170, crop from round((170 - 128) / 2) = 21.
    grey = _photo(64, 48).convert("L").convert("RGB").resize((170, 128), Image.Resampling.BILINEAR)
    expected = np.asarray(grey.crop((21, 0, 149, 128)), np.float32)[..., :1] / np.float32(255)
    params = {**L6, "image": data["index"], "x": 8, "y": 8, "c": 3}
    oracle = gradsight.node_gradient("seed-cnn", "L6", (8, 8, 3), expected)
    np.testing.assert_allclose(_npy(client.get("/api/unit.npy", params=params)), oracle.gradient, rtol=1e-6,
                               atol=1e-9)


def test_an_internal_error_answers_500_once_and_the_server_keeps_serving(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(gradsight, "node_gradient", broken)
    response = client.get("/api/unit", params={**L6, "x": 14, "y": 13, "c": 9})
    assert response.status_code == 500
    assert response.json()["error"].startswith("internal error (RuntimeError: simulated failure)")
    monkeypatch.undo()
    _ok(client.get("/api/unit", params={**L6, "x": 14, "y": 13, "c": 9}))
    assert client.get("/api/nothing").status_code == 404 and "error" in client.get("/api/nothing").json()


# -- the user's model ------------------------------------------------------------------------------------------------


def _state(model: torch.nn.Module):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()], [p.grad for p in model.parameters()], hooks)


def test_concurrent_clicks_from_two_tabs_leave_the_users_model_untouched(user_model, photo_path):
    model = small_cnn(seed=5)
    model.train()  # flags the explorer must not change
    model[0].weight.requires_grad_(False)
    before = _state(model)
    client = TestClient(create_app(Session(model, [photo_path])), base_url=BASE)
    units = [(x, y, c) for x in (0, 20, 55) for y in (0, 31) for c in (0, 7)] * 2
    requests = [{"model": "Sequential (given)", "image": i % 2 + 1, "layer": "7", "x": x, "y": y, "c": c}
                for i, (x, y, c) in enumerate(units)]
    barrier = threading.Barrier(8)

    def click(params):
        try:
            barrier.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass
        return _npy(client.get("/api/unit.npy", params=params))

    with ThreadPoolExecutor(8) as pool:
        gradients = list(pool.map(click, requests))
    state = _state(model)
    assert all(torch.equal(before[0][k], state[0][k]) for k in before[0])
    assert state[1:] == before[1:]
    assert state[4] == 0
    # Each answer equals the same unit computed alone, afterwards.
    session = Session(model, [photo_path])
    for params, gradient in zip(requests[:12], gradients):
        view, _ = session.unit(params["model"], params["image"], "7", (params["x"], params["y"], params["c"]))
        np.testing.assert_allclose(gradient, view.gradient, rtol=1e-5, atol=1e-8)


# -- serving for real ------------------------------------------------------------------------------------------------


def test_explore_serves_on_loopback_without_blocking_and_stops(capsys):
    import httpx

    from gradsight.explorer import explore

    handle = explore("seed-cnn", open_browser=False, block=False)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", handle.url)
        assert handle.url in capsys.readouterr().out
        assert httpx.get(handle.url).status_code == 200
        assert httpx.get(handle.url + "api/models", headers={"host": "evil.example"}).status_code == 403
        assert httpx.get(handle.url + "api/models").json()["default"] == "seed-cnn"
    finally:
        handle.stop()
    assert not handle.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(handle.url, timeout=2)


def test_answers_are_not_held_back_by_nagle_and_delayed_acks():
    """Regression: the socket was made with proto 0, so asyncio did not set TCP_NODELAY on connections and every
    keep-alive answer waited ~40 ms for the client's delayed ACK (Linux's minimum), even a static file."""
    import socket
    import time

    import httpx

    from gradsight.explorer.server import _bind, start

    sock = _bind("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP  # what asyncio checks before setting TCP_NODELAY
    sock.close()
    handle = start("seed-cnn")
    try:
        with httpx.Client() as client:
            times = []
            for _ in range(12):
                begin = time.perf_counter()
                client.get(handle.url + "static/explorer.css").raise_for_status()
                times.append(time.perf_counter() - begin)
    finally:
        handle.stop()
    assert min(times[2:]) < 0.035, times  # the stall is >= 40 ms on every request


def test_the_cli_refuses_bad_photos_and_busy_ports_before_serving(tmp_path):
    import argparse

    from gradsight.errors import BadInputError
    from gradsight.explorer.cli import add_parser
    from gradsight.explorer.server import start

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["explore", str(tmp_path / "missing.png"), "--model", "seed-cnn", "--port", "0",
                              "--no-browser"])
    assert (args.model, args.port, args.host, args.no_browser) == ("seed-cnn", 0, "127.0.0.1", True)
    with pytest.raises(BadInputError, match="missing.png'.*no such file"):
        args.run(args)
    handle = start("seed-cnn")
    try:
        port = int(handle.url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(BadInputError, match=f"port {port} on 127.0.0.1: expected a free port"):
            start("seed-cnn", port=port)
    finally:
        handle.stop()
