"""The FiftyOne App, in Debian's headless Chromium driven by Playwright (no browser download):
the masks are drawn, and the operator runs from the App.  Screenshots go to test-artifacts/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import fiftyone as fo
import httpx
import pytest

from conftest import free_port, wait_for
from test_fiftyone_plugin import PROMPT_TEXT, THRESHOLD, op, segment

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root and on a closed network Chromium needs these, or it hangs on background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def serving(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def app(plugin, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    proc = subprocess.Popen([sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1",
                             "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: serving(url) or proc.poll() is not None, 120, "the FiftyOne App")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def reviewed(plugin, service):
    """The sample pictures, labelled through the operator, in a dataset the App process can see."""
    ds = fo.Dataset("app-review", overwrite=True, persistent=True)
    ds.add_samples([fo.Sample(filepath=str(p)) for p in sorted((REPO / "examples/images").glob("*.jpg"))])
    result = segment(ds, {"prompts": PROMPT_TEXT, "threshold": THRESHOLD, "url": service})
    ds.reload()
    assert result["done"] == len(ds) and ds.count("sam3.detections") > 0, result
    yield ds
    ds.delete()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_app_draws_masks_and_runs_the_operator(reviewed, app, browser, service):
    # `reviewed` first (all three are module fixtures, set up in this order): Playwright runs an
    # event loop in this thread, under which execute_operator would hand back an un-awaited task.
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{app}/datasets/{reviewed.name}")
    page.wait_for_selector("text=sam3", timeout=60_000)  # the label field in the sidebar
    if page.get_by_text("Dismiss").count():
        page.get_by_text("Dismiss").click()
    page.wait_for_timeout(3000)  # let the grid tiles render their masks
    shot(page, "app-grid")

    page.locator("img, canvas").nth(3).click()  # a sample opens in the modal, its masks drawn
    page.wait_for_timeout(3000)
    shot(page, "app-sample")
    page.keyboard.press("Escape")

    page.keyboard.press("`")  # the operator browser
    page.wait_for_timeout(1000)
    page.keyboard.type("Segment with SAM3")
    page.wait_for_timeout(1000)
    shot(page, "app-operator-browser")
    page.keyboard.press("Enter")
    form = page.get_by_role("dialog").locator("input:not([type=checkbox]):not([type=radio])")
    form.first.wait_for(timeout=30_000)
    # Each input by the label the form shows above it (the first line of the largest element
    # around the input holding no other input): FiftyOne gives the inputs no name or label element.
    labels = form.evaluate_all("""inputs => inputs.map(input => {
        let field = input;
        while (field.parentElement && field.parentElement.querySelectorAll("input").length === 1)
            field = field.parentElement;
        return field.innerText.split("\\n")[0];
    })""")
    form.nth(labels.index("Prompts")).fill("thing")
    form.nth(labels.index("Score threshold")).fill(str(THRESHOLD))
    form.nth(labels.index("Label field")).fill("sam3_app")
    form.nth(labels.index("Service URL")).fill(service)  # the App process has no SAMFLEET_URL
    page.wait_for_timeout(1000)
    shot(page, "app-operator-form")
    page.get_by_role("button", name="Execute").click()

    def labelled_from_app() -> bool:
        reviewed.reload()
        return reviewed.has_field("sam3_app") and len(reviewed.exists("sam3_app")) == len(reviewed)

    wait_for(labelled_from_app, 180, "the operator run from the App to label every sample", interval_s=1)
    assert set(reviewed.distinct("sam3_app.detections.prompt")) == {"thing"}
    page.wait_for_timeout(3000)
    shot(page, "app-after-run")
