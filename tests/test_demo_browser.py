"""The demo in a real browser: Debian's Chromium, headless, driven by Playwright for Python. Uploads an image on
each tab, waits for the result, decodes the served PNGs and compares them with the model run directly, checks the
page asked nothing of any other host, and saves screenshots (tmp_path, and out/ when that folder exists)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT_MS = 120_000  # generous: the machine is small and may be busy
FILE_ROUTE = "/gradio_api/file="  # where Gradio serves uploaded and produced files
OUT_DIR = Path(__file__).resolve().parents[1] / "out"

pytestmark = pytest.mark.browser
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is absent (CI installs Debian's chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = sync_api.expect

from conftest import assert_close8, expected_restore, free_port, natural_image, save, write_tiny_checkpoint  # noqa: E402

from demo.app import build_app, serve  # noqa: E402
from infer.backends import open_backend  # noqa: E402
from pipeline.io import load_rgb8  # noqa: E402
from pipeline.reference import degrade_reference  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real demo server on a free local port, with a tiny random model; yields (url, checkpoint)."""
    folder = tmp_path_factory.mktemp("browser-server")
    checkpoint = write_tiny_checkpoint(folder / "tiny.pt")
    app = build_app(open_backend(checkpoint, device="cpu"), workroot=folder)
    _, local_url, _ = serve(app, port=free_port(), block=False)
    yield local_url, checkpoint
    app.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, served):
    """A fresh page (its own Gradio session) at the demo; `page.requests_seen` lists every URL it asked for."""
    expect.set_options(timeout=TIMEOUT_MS)  # Playwright's expect() otherwise gives up after 5 s
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.requests_seen = []
    page.on("request", lambda request: page.requests_seen.append(request.url))
    page.goto(served[0], wait_until="load")
    yield page
    context.close()


def upload(page, component_id: str, path: str) -> None:
    """Choose a file in a gr.File and wait until Gradio has received it (its link appears)."""
    page.locator(f"#{component_id} input[type=file]").set_input_files(path)
    expect(page.locator(f'#{component_id} a[href*="{FILE_ROUTE}"]')).to_have_count(1)


def fetch_image(page, locator) -> np.ndarray:
    """Decode the PNG an <img> or <a> points to, fetched by the page's own context."""
    url = locator.get_attribute("src") or locator.get_attribute("href")
    response = page.request.get(url)
    assert response.ok, f"{url}: HTTP {response.status}"
    return load_rgb8(response.body())


def wait_until_shown(page, image) -> None:
    """Wait until a (lazy-loaded) <img> has decoded its pixels."""
    image.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())


def keep_screenshot(page, tmp_path: Path, name: str) -> Path:
    """Save a full-page screenshot as a test artifact; also copy it to out/ when that folder exists."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    if OUT_DIR.is_dir():
        shutil.copyfile(shot, OUT_DIR / name)
    return shot


def assert_local_only(page, base_url: str) -> None:
    outside = [url for url in page.requests_seen if not url.startswith((base_url, "data:", "blob:"))]
    assert not outside, f"the page contacted other hosts: {outside[:5]}"


def test_restore_tab(page, served, tmp_path):
    base_url, checkpoint = served
    clean8 = natural_image(120, 160, seed=40)
    upload(page, "restore-input", save(clean8, tmp_path / "photo.png"))
    page.locator("#restore-run").click()
    download = page.locator(f'#restore-downloads a[href*="{FILE_ROUTE}"]')
    expect(download).to_have_count(1)
    expect(download).to_have_attribute("href", re.compile(r"photo_restored\.png$"))
    before, after = page.locator("#restore-slider img").nth(0), page.locator("#restore-slider img").nth(1)
    expect(after).to_have_attribute("src", re.compile(r"photo_restored\.png$"))
    for image in (before, after):
        wait_until_shown(page, image)
    expect(page.locator("#restore-report")).to_contain_text("photo.png: 160x120")
    shot = keep_screenshot(page, tmp_path, "demo_browser.png")

    restored8 = fetch_image(page, download)
    assert_close8(restored8, expected_restore(checkpoint, clean8))
    assert np.abs(restored8.astype(int) - clean8).mean() > 1  # the model changed it, as run directly
    assert np.array_equal(fetch_image(page, after), restored8)  # the slider shows the same PNG
    assert np.array_equal(fetch_image(page, before), clean8)
    assert after.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [160, 120]
    assert shot.stat().st_size > 10_000
    assert_local_only(page, base_url)


def test_simulate_tab(page, served, tmp_path):
    base_url, checkpoint = served
    clean8 = natural_image(96, 112, seed=41)
    page.get_by_role("tab", name="Simulate").click()
    upload(page, "simulate-input", save(clean8, tmp_path / "clean.png"))
    page.locator("#simulate-run").click()  # defaults: sigma 15, JPEG quality 30, seed 0
    expect(page.locator("#simulate-metrics")).to_contain_text("restored")
    restored = page.locator("#simulate-restored img")
    wait_until_shown(page, restored)
    wait_until_shown(page, page.locator("#simulate-degraded img"))
    keep_screenshot(page, tmp_path, "demo_browser_simulate.png")

    params = {"sigma_255": 15.0, "quality": 30, "subsampling": 2, "quality2": 0, "shift_y": 0, "shift_x": 0}
    degraded8 = degrade_reference(clean8, params, np.random.default_rng(0))
    assert np.array_equal(fetch_image(page, page.locator("#simulate-degraded img")), degraded8)
    assert_close8(fetch_image(page, restored), expected_restore(checkpoint, degraded8))
    assert np.array_equal(fetch_image(page, page.locator("#simulate-clean img")), clean8)
    expect(page.locator("#simulate-metrics")).to_contain_text("JPEG quality 30 (4:2:0)")
    assert_local_only(page, base_url)
