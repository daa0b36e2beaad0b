"""End to end: the demo page in headless Chromium (Debian's chromium + chromedriver, never a download).

The model is ``edge_sam_dyt_debug`` with seeded random weights whose decoder is perturbed (see
``conftest.SPREAD``), so the clicked mask is neither empty nor the whole image; the test checks that
before trusting the comparison. The page's mask must equal the library predictor's mask for the same
click pixel for pixel, both as the PNG the server sent and as the overlay actually drawn on the canvas.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.demo.conftest import CLICK, png_of, scene
from tests.helpers.browser import chromium, require_browser, wait_body

ROOT = Path(__file__).resolve().parents[2]
SCALE = 2.5  # the browser image is 2.5x the conftest scene so clicks land on exact-enough pixels

pytestmark = pytest.mark.browser
require_browser()

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def artifacts_dir() -> Path:
    """Where screenshots are kept: ``$EDGESAM_ARTIFACTS`` or ``<repo>/test-artifacts``."""
    folder = Path(os.environ.get("EDGESAM_ARTIFACTS") or ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """Headless Chromium driven through the system chromedriver (explicit path: no Selenium Manager)."""
    with chromium() as browser:
        yield browser


@pytest.fixture()
def small_limit_server(checkpoints):
    """The demo on a free loopback port with a 1 MB upload limit."""
    from edgesam_core.demo.server import serve
    from edgesam_core.demo.session import DemoLimits, DemoSession

    session = DemoSession.from_checkpoint(checkpoints["edge_sam_dyt_debug"],
                                          limits=DemoLimits(max_upload_bytes=1_000_000))
    with serve(session, port=0) as running:
        yield running


def _library_mask(checkpoint: Path, image: np.ndarray, point: list[float]) -> np.ndarray:
    """The mask ``edgesam segment`` logic picks for one foreground click: best of 4 by stability score."""
    import torch

    from edgesam_core.inference.amg import calculate_stability_score
    from edgesam_core.inference.artifact_loader import load_predictor

    predictor = load_predictor(checkpoint)
    predictor.set_image(image)
    result = predictor.predict(point_coords=np.array([point]), point_labels=np.array([1]), num_multimask_outputs=4)
    stability = calculate_stability_score(torch.as_tensor(result.low_res_logits), 0.0, 1.0).numpy()
    return result.masks[int(np.argmax(np.nan_to_num(stability, nan=-1.0)))]


_CANVAS_ALPHA_JS = """
const c = document.getElementById('mask-canvas');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let bits = '';
for (let i = 3; i < d.length; i += 4) bits += d[i] > 0 ? '1' : '0';
return [c.width, c.height, bits];
"""


def test_click_draws_the_library_mask(driver, small_limit_server, checkpoints, tmp_path):
    image = scene(int(96 * SCALE), int(128 * SCALE))
    path = tmp_path / "scene.png"
    path.write_bytes(png_of(image))

    driver.get(small_limit_server.url)
    wait_body(driver, "data-status", lambda v: v == "idle")
    driver.find_element(By.ID, "file-input").send_keys(str(path))
    wait_body(driver, "data-status", lambda v: v == "ready")
    assert small_limit_server.session.encode_count == 1

    canvas = driver.find_element(By.ID, "prompt-canvas")
    rect = canvas.rect
    target = (CLICK[0] * SCALE, CLICK[1] * SCALE)
    dx = round(target[0] * rect["width"] / image.shape[1] - rect["width"] / 2)
    dy = round(target[1] * rect["height"] / image.shape[0] - rect["height"] / 2)
    ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click().perform()
    wait_body(driver, "data-mask-count", lambda v: v not in ("", "0"))
    wait_body(driver, "data-status", lambda v: v == "ready")

    result = driver.execute_script("return window.edgesamDemo.state.result;")
    index = driver.execute_script("return window.edgesamDemo.state.index;")
    point = result["prompts"]["points"][0]
    assert result["prompts"]["labels"] == [1]
    assert abs(point[0] - target[0]) <= 3 and abs(point[1] - target[1]) <= 3, (point, target)

    expected = _library_mask(checkpoints["edge_sam_dyt_debug"], image, point)
    assert 0 < expected.sum() < expected.size, "seeded model gives a trivial mask here; change conftest.SPREAD"

    sent = result["masks"][index]
    png = base64.b64decode(sent["png"].split(",", 1)[1])
    page_mask = np.asarray(Image.open(io.BytesIO(png)).convert("L")) > 0
    np.testing.assert_array_equal(page_mask, expected)
    assert sent["area"] == int(expected.sum())

    width, height, bits = driver.execute_script(_CANVAS_ALPHA_JS)
    drawn = np.frombuffer(bits.encode(), dtype=np.uint8).reshape(height, width) == ord("1")
    assert (width, height) == (image.shape[1], image.shape[0])
    assert drawn.any(), "the overlay canvas is fully transparent"
    np.testing.assert_array_equal(drawn, expected)

    score_text = driver.find_element(By.ID, "score").text
    assert "score" in score_text and "area" in score_text
    # The click ran the decoder only: still one encoding, one decoding.
    assert (small_limit_server.session.encode_count, small_limit_server.session.decode_count) == (1, 1)

    # Right click = background point, drag = box, multimask = 3 candidates to cycle through.
    ActionChains(driver).move_to_element_with_offset(canvas, dx + 40, dy + 30).context_click().perform()
    wait_body(driver, "data-status", lambda v: v == "ready")
    WebDriverWait(driver, 20).until(lambda d: small_limit_server.session.decode_count == 2)
    ActionChains(driver).move_to_element_with_offset(canvas, -rect["width"] / 3, -rect["height"] / 3) \
        .click_and_hold().move_by_offset(rect["width"] / 2, rect["height"] / 2).release().perform()
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("const r = window.edgesamDemo.state.result; return r && r.prompts.box;"))
    wait_body(driver, "data-status", lambda v: v == "ready")
    prompts = driver.execute_script("return window.edgesamDemo.state.result.prompts;")
    assert prompts["labels"] == [1, 0] and prompts["box"][0] < prompts["box"][2]
    driver.find_element(By.ID, "multimask").click()
    wait_body(driver, "data-mask-count", lambda v: v == "3")
    before = driver.find_element(By.TAG_NAME, "body").get_attribute("data-mask-index")
    driver.find_element(By.ID, "next-mask").click()
    wait_body(driver, "data-mask-index", lambda v: v == str((int(before) + 1) % 3))
    assert small_limit_server.session.encode_count == 1

    shot = artifacts_dir() / "demo_browser.png"
    assert driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 1000
    with Image.open(shot) as saved:
        assert min(saved.size) > 100


def test_bad_uploads_show_a_message(driver, small_limit_server, tmp_path):
    driver.get(small_limit_server.url)
    wait_body(driver, "data-status", lambda v: v == "idle")
    message = driver.find_element(By.ID, "message")

    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not an image\n")
    driver.find_element(By.ID, "file-input").send_keys(str(text_file))
    wait_body(driver, "data-status", lambda v: v == "error")
    assert "Not an image" in message.text
    assert message.get_attribute("data-kind") == "error"

    big = tmp_path / "huge.png"
    big.write_bytes(png_of(scene(8, 8)) + bytes(1_200_000))
    driver.get(small_limit_server.url)
    wait_body(driver, "data-status", lambda v: v == "idle")
    driver.find_element(By.ID, "file-input").send_keys(str(big))
    wait_body(driver, "data-status", lambda v: v == "error")
    message = driver.find_element(By.ID, "message")
    assert "limit is 1.0 MB" in message.text
    assert small_limit_server.session.encode_count == 0
