"""Re-make docs/explorer.png, the README's picture of the explorer (needs chromium and chromium-driver).

Example:
    $ .venv/bin/python docs/explorer_screenshot.py        # writes docs/explorer.png (< 300 KB)

The view: EfficientNet-Lite0 on the bundled ouzel photo, unit (5, 8, 0) of blocks.3, with its top-5 and saliency.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver import ActionChains
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import Select, WebDriverWait

from gradsight.explorer import explore

OUT = Path(__file__).with_name("explorer.png")


def main() -> None:
    handle = explore(open_browser=False, block=False)
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--window-size=1400,1000", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, 120)
    try:
        driver.get(handle.url)
        wait.until(lambda d: d.find_element("id", "input-analytic").get_attribute("data-unit") == "0,0,0")
        Select(driver.find_element("id", "image")).select_by_value("1")
        Select(driver.find_element("id", "model")).select_by_value("efficientnet_lite0")
        wait.until(lambda d: d.find_element("id", "input-analytic").get_attribute("data-layer") == "blocks.3")
        wait.until(lambda d: len(d.find_elements("css selector", "#top5 li")) == 5)
        grid = driver.find_element("id", "grid-svg")
        width, height = grid.rect["width"], grid.rect["height"]
        ActionChains(driver).move_to_element_with_offset(grid, round(8.5 * width / 14 - width / 2),
                                                         round(5.5 * height / 14 - height / 2)).click().perform()
        wait.until(lambda d: d.find_element("id", "input-analytic").get_attribute("data-unit") == "5,8,0")
        wait.until(lambda d: "&x=5&y=8&" in (d.find_element("id", "gradient-image").get_attribute("data-loaded")
                                             or ""))
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.quit()
        handle.stop()
    shot = shot.crop((0, 0, shot.width, min(shot.height, 880)))
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
