"""The explorer in a real browser: Debian's headless Chromium driven by Selenium 4.

One server (``gradsight.explorer.explore(block=False)`` on a free port) and one browser for the whole module.
The numbers are read from the page's SVG data attributes and checked against gradsight's Python API and
against the closed form r = 33, S = 8, P = 9 ('same') or 16 (PyTorch padding) of the seed CNN's L6.
Without chromium/chromedriver these tests skip, except under CI (CI set), where they fail: run
``bash tools/ensure_chromium.sh``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

import gradsight

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "outputs" / "test-artifacts"
WAIT = 30  # seconds; the first click also builds the model and warms up its kernels


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require_browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    message = ""
    if missing:
        message = (f"browser tests need Debian's chromium and chromium-driver; missing {', '.join(missing)}. "
                   "Run `bash tools/ensure_chromium.sh` (as root it installs them with apt-get)")
    else:
        try:
            import selenium  # noqa: F401
        except ImportError:
            message = "browser tests need selenium: pip install -e '.[test]'"
    if message:
        if _in_ci():  # never skipped in CI
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def server():
    from gradsight.explorer import explore

    handle = explore(open_browser=False, block=False)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--window-size=1400,1150",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def page(server, driver):
    """The explorer's page, loaded and showing its default: the exercise's L6 unit (0, 0, 0)."""
    driver.get("about:blank")
    driver.get_log("performance")  # drop what the browser itself loaded at start (its new-tab page)
    driver.get_log("browser")
    driver.get(server.url)
    _wait_unit(driver, "0,0,0")
    return driver


def _wait(driver, condition, message):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page rebuilds its SVGs when the model changes: elements found a moment ago may be gone.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, WAIT, ignored_exceptions=ignored).until(condition, message)


def _wait_unit(driver, unit: str, model: str | None = None):
    """Wait until the page shows ``unit`` ('x,y,c') and its gradient picture is on screen (loaded)."""
    def shown(d):
        rect = d.find_element("id", "input-analytic")
        if rect.get_attribute("data-unit") != unit:
            return False
        if model is not None and d.execute_script("return document.getElementById('model').value") != model:
            return False
        return d.execute_script("const i = document.getElementById('gradient-image');"
                                "return i.getAttribute('href') !== null && i.dataset.unit === arguments[0]"
                                " && i.dataset.loaded === i.getAttribute('href');", unit)
    _wait(driver, shown, f"the page never showed unit {unit}")


def _rect(driver, element_id: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(rows, cols) inclusive from the SVG rectangle's data attributes, after checking its geometry agrees."""
    el = driver.find_element("id", element_id)
    if el.get_attribute("visibility") == "hidden":
        return None
    r0, r1, c0, c1 = (int(el.get_attribute(f"data-{k}")) for k in ("row0", "row1", "col0", "col1"))
    # The drawn rectangle covers exactly those pixels: pixel (r, c) is [c, c + 1] x [r, r + 1].
    assert [float(el.get_attribute(k)) for k in ("x", "y", "width", "height")] == [c0, r0, c1 - c0 + 1, r1 - r0 + 1]
    return (r0, r1), (c0, c1)


def _picture_digest(driver) -> str:
    """A digest of the gradient picture's decoded pixels, as the browser sees them."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const img = new Image();
        img.onload = () => {
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const ctx = canvas.getContext('2d');
            ctx.drawImage(img, 0, 0);
            const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
            let h = 2166136261;
            for (let i = 0; i < data.length; i++) { h ^= data[i]; h = Math.imul(h, 16777619) >>> 0; }
            done(`${canvas.width}x${canvas.height}:${h}`);
        };
        img.onerror = () => done('failed to load');
        img.src = document.getElementById('gradient-image').getAttribute('href');
    """)


def _severe(driver) -> list[str]:
    """Console errors since the last call (reading the log empties it)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _click_cell(driver, x: int, y: int):
    """Click the centre of unit (x, y) on the layer grid; Selenium 4 offsets count from the element's centre."""
    from selenium.webdriver import ActionChains

    grid = driver.find_element("id", "grid-svg")
    rows, cols = int(grid.get_attribute("data-rows")), int(grid.get_attribute("data-cols"))
    width, height = grid.rect["width"], grid.rect["height"]
    assert abs(width / cols - height / rows) < 0.5, "grid cells should be square on screen"
    dx = (y + 0.5) * width / cols - width / 2
    dy = (x + 0.5) * height / rows - height / 2
    ActionChains(driver).move_to_element_with_offset(grid, round(dx), round(dy)).click().perform()


def test_page_loads_without_console_errors_and_only_talks_to_its_server(page, server):
    assert _severe(page) == []
    origin = urlparse(server.url)
    assert origin.hostname == "127.0.0.1"
    resources = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    requested = [json.loads(entry["message"])["message"] for entry in page.get_log("performance")]
    requested = [m["params"]["request"]["url"] for m in requested if m["method"] == "Network.requestWillBeSent"]
    assert any(url.endswith("/static/explorer.js") for url in resources)
    assert len(requested) >= 5  # page, script, style, icon, the API calls and pictures
    for url in resources + requested:
        parsed = urlparse(url)
        assert (parsed.scheme, parsed.hostname, parsed.port) == ("http", "127.0.0.1", origin.port), url
    # The default view is the exercise's reference picture: seed CNN ('same'), random input, L6 unit (0, 0, 0).
    assert page.execute_script("return document.getElementById('model').value") == "seed-cnn"
    assert _rect(page, "input-analytic") == ((0, 23), (0, 23))  # 0*8 - 9 + 33 - 1 = 23, clipped at 0


def test_clicking_a_grid_unit_puts_the_rectangle_on_its_analytic_field(page):
    before = _picture_digest(page)
    _click_cell(page, 3, 5)
    _wait_unit(page, "3,5,0")
    expected = gradsight.receptive_field("seed-cnn")["L6"].rect((3, 5))
    # Closed form: rows 3*8 - 9 .. 3*8 - 9 + 33 - 1, cols 5*8 - 9 .. 5*8 - 9 + 33 - 1.
    assert expected == ((3 * 8 - 9, 3 * 8 - 9 + 33 - 1), (5 * 8 - 9, 5 * 8 - 9 + 33 - 1))
    assert _rect(page, "input-analytic") == expected
    assert _rect(page, "gradient-analytic") == expected
    assert _rect(page, "input-unclipped") == expected  # nothing falls in the padding here
    measured = gradsight.node_gradient("seed-cnn", "L6", (3, 5, 0)).support_box()
    assert _rect(page, "input-support") == measured
    assert page.find_element("id", "unit-info").get_attribute("data-agreement") == ("agree" if measured == expected
                                                                                    else "inside")
    after = _picture_digest(page)
    assert after != before and not after.startswith("failed")
    assert after.startswith("128x128:")
    assert _severe(page) == []


def test_arrow_keys_move_the_unit_by_one_and_the_rectangle_by_the_effective_stride(page):
    from selenium.webdriver.common.keys import Keys

    _click_cell(page, 3, 5)
    _wait_unit(page, "3,5,0")
    field = gradsight.receptive_field("seed-cnn")["L6"]
    (r0, _), (c0, _) = _rect(page, "input-analytic")
    page.find_element("id", "grid-svg").send_keys(Keys.ARROW_RIGHT)
    _wait_unit(page, "3,6,0")
    (r1, _), (c1, _) = _rect(page, "input-analytic")
    assert (r1 - r0, c1 - c0) == (0, field.stride[1]) == (0, 8)
    page.find_element("id", "grid-svg").send_keys(Keys.ARROW_DOWN)
    _wait_unit(page, "4,6,0")
    assert _rect(page, "input-analytic") == field.rect((4, 6))
    assert field.rect((4, 6)) == ((4 * 8 - 9, 4 * 8 - 9 + 32), (6 * 8 - 9, 6 * 8 - 9 + 32))
    page.find_element("id", "grid-svg").send_keys(Keys.ARROW_UP, Keys.ARROW_LEFT)
    _wait_unit(page, "3,5,0")
    assert _severe(page) == []


def test_clicking_the_picture_picks_the_unit_centred_nearest(page):
    from selenium.webdriver import ActionChains

    svg = page.find_element("id", "input-svg")
    margin = 128 // 8  # the page shows 1/8 of the input size around it, for the padding
    scale = svg.rect["width"] / (128 + 2 * margin)
    row, col = 60, 100
    dx = (col + 0.5 + margin) * scale - svg.rect["width"] / 2
    dy = (row + 0.5 + margin) * scale - svg.rect["height"] / 2
    ActionChains(page).move_to_element_with_offset(svg, round(dx), round(dy)).click().perform()
    # Unit u's field is centred at u*8 - 9 + (33 - 1)/2 = 8u + 7: row 60 -> (60 - 7)/8 = 6.6 -> 7; col 100 -> 12.
    expected = gradsight.receptive_field("seed-cnn")["L6"].unit_at((row, col))
    assert expected == (7, 12)
    _wait_unit(page, "7,12,0")


def test_hovering_a_table_row_draws_the_nested_fields_up_to_that_layer(page):
    from selenium.webdriver import ActionChains

    _click_cell(page, 3, 5)
    _wait_unit(page, "3,5,0")
    row = page.find_element("css selector", "#rf-table tbody tr[data-layer='L4']")
    ActionChains(page).move_to_element(row).perform()
    _wait(page, lambda d: d.find_element("id", "input-growth").get_attribute("data-layer") == "L4"
          and len(d.find_elements("css selector", "#input-growth rect")) == 4, "no growth rectangles")
    report = gradsight.receptive_field("seed-cnn")
    centre = report["L6"].centre((3, 5))
    rects = page.find_elements("css selector", "#input-growth rect")
    spans = []
    for el, name, size in zip(rects, ("L1", "L2", "L3", "L4"), (5, 9, 13, 17)):
        assert el.get_attribute("data-layer") == name
        r0, r1, c0, c1 = (int(el.get_attribute(f"data-{k}")) for k in ("row0", "row1", "col0", "col1"))
        field = report[name]
        unit = field.unit_at(centre)
        first = tuple(u * s - p for u, s, p in zip(unit, field.stride, field.padding))
        assert (r0, c0) == first and (r1 - r0 + 1, c1 - c0 + 1) == (size, size)
        spans.append((r0, r1, c0, c1))
    for inner, outer in zip(spans, spans[1:]):  # each layer's field contains the previous one's
        assert outer[0] <= inner[0] and inner[1] <= outer[1] and outer[2] <= inner[2] and inner[3] <= outer[3]
    ActionChains(page).move_to_element(page.find_element("id", "grid-svg")).perform()
    _wait(page, lambda d: not d.find_elements("css selector", "#input-growth rect"), "growth stayed drawn")


def test_uploading_a_non_image_shows_one_clear_error_and_the_page_keeps_working(page, tmp_path):
    _severe(page)
    notes = tmp_path / "notes.txt"
    notes.write_text("these are lecture notes, not a photo\n")
    page.find_element("id", "upload").send_keys(str(notes))
    _wait(page, lambda d: d.find_element("id", "error").is_displayed(), "no error shown")
    text = page.find_element("id", "error-text").text
    assert text.startswith("upload 'notes.txt': expected an image file (PNG, JPEG")
    assert "got data that is not an image" in text
    assert [m for m in _severe(page) if "400" not in m] == []  # only the refused upload's status
    _click_cell(page, 2, 2)
    _wait_unit(page, "2,2,0")
    assert not page.find_element("id", "error").is_displayed()
    assert len(page.find_elements("css selector", "#image option")) == 2  # nothing was added


def test_teaching_preset_with_pytorch_padding_draws_the_padding_part_dashed(page):
    page.find_element("id", "preset-torch").click()
    _wait_unit(page, "0,0,0", model="seed-cnn-torch")
    # P = 2 + 2*1 + 1*2 + 1*2 + 1*4 + 1*4 = 16: unit 0 sees -16..16, rows/cols 0..16 inside the image.
    assert _rect(page, "input-analytic") == gradsight.receptive_field("seed-cnn-torch")["L6"].rect((0, 0))
    assert _rect(page, "input-analytic") == ((0, 16), (0, 16))
    assert _rect(page, "input-unclipped") == ((-16, 16), (-16, 16))
    dashes = page.find_element("id", "input-unclipped").value_of_css_property("stroke-dasharray")
    assert dashes not in ("", "none")
    assert _severe(page) == []


def test_the_embedded_classifier_shows_its_top_5_and_any_method_of_the_family(page):
    from selenium.webdriver.support.ui import Select

    Select(page.find_element("id", "image")).select_by_value("1")
    Select(page.find_element("id", "model")).select_by_value("efficientnet_lite0")
    _wait(page, lambda d: len(d.find_elements("css selector", "#top5 li")) == 5, "no top-5 shown")
    assert page.find_element("css selector", "#top5 li").text.startswith("20 water ouzel, dipper")
    # the top-5 and the first unit's field come from two requests: wait for the field to be drawn too
    _wait(page, lambda d: d.find_element("id", "input-analytic").get_attribute("data-layer") is not None,
          "no field drawn")
    layer = page.find_element("id", "input-analytic").get_attribute("data-layer")
    assert layer == "blocks.3"  # the deepest layer whose field still fits in 224 pixels (147)
    first = page.find_element("id", "saliency-image").get_attribute("src")
    Select(page.find_element("id", "method")).select_by_value("input_x_gradient")
    _wait(page, lambda d: "method=input_x_gradient" in d.find_element("id", "saliency-image").get_attribute("src")
          and d.find_element("id", "saliency-image").is_displayed(), "the map was not redrawn")
    assert "method=gradient" in first
    assert "input_x_gradient" in page.find_element("id", "predict-note").text
    assert _severe(page) == []


def test_screenshot_of_the_main_view(page):
    page.find_element("id", "preset-same").click()
    _wait_unit(page, "0,0,0", model="seed-cnn")
    _click_cell(page, 5, 4)
    _wait_unit(page, "5,4,0")
    # The picture on screen is the new unit's, not the previous one's still loading away.
    loaded = page.find_element("id", "gradient-image").get_attribute("data-loaded")
    assert "&x=5&y=4&c=0" in loaded and "model=seed-cnn&" in loaded
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "explorer.png"
    assert page.save_screenshot(str(path))
    from PIL import Image

    with Image.open(path) as shot:
        assert shot.size[0] >= 1000 and shot.size[1] >= 700
    assert _severe(page) == []
