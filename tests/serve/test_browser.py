"""The web page in a real browser: Debian's Chromium driven by Selenium against ``glocal serve``'s app run by
uvicorn on a free localhost port, over a small index built here from the generated demo images.

The set-up installs ``chromium`` and ``chromium-driver`` with apt-get when they are absent and this process
is root; otherwise (or when the install fails, or Selenium is missing) the tests are skipped with the
reason printed. Screenshots are saved under the test's temporary folder (their paths are printed) and
copied to ``$GLOCAL_SCREENSHOTS`` (default ``/tmp/web_screenshots``; set it empty to keep no copy).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

TOKEN = "browser-token"
N = 12
QUERY_OF = 4  # the indexed image the query photo is a transformed copy of
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,900")
APT_TIMEOUT = 900


def _skip(reason: str) -> None:
    """Skip, saying why where a quiet run shows it too (the warnings summary)."""
    print(f"\nSKIPPED browser tests: {reason}")
    warnings.warn(f"browser tests skipped: {reason}", UserWarning, stacklevel=2)
    pytest.skip(reason)


def _browser_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(browser, driver) paths; installs Debian's chromium + chromium-driver once when absent (root only)."""
    for module, extra in (("selenium", "test"), ("uvicorn", "serve"), ("fastapi", "serve")):
        if find_spec(module) is None:
            _skip(f"needs {module} (pip install 'glocal[{extra}]')")
    found = _browser_paths()
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        _skip("chromium and chromedriver are not installed, and installing them needs root and apt-get "
              "(apt-get install chromium chromium-driver)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT)
            if done.returncode != 0:
                _skip(f"'{' '.join(cmd)}' failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    except subprocess.TimeoutExpired:
        _skip(f"installing chromium took longer than {APT_TIMEOUT} s")
    found = _browser_paths()
    if not found:
        _skip("apt-get installed chromium but chromium or chromedriver is still not on PATH")
    return found


@pytest.fixture(scope="module")
def site(demo_benchmark, tmp_path_factory: pytest.TempPathFactory, chromium) -> Iterator[dict]:
    """A writable service over a small index, listening on a free localhost port."""
    import uvicorn
    from PIL import Image

    from glocal.index.builder import build_index
    from glocal.serve.app import create_app

    root = tmp_path_factory.mktemp("browser")
    paths, names = demo_benchmark.db_paths[:N], demo_benchmark.db_names[:N]
    build_index(paths, names, root / "x.glx", progress=False, settings={"codebook_size": 256}).collection.close()
    # the query: the indexed image turned by 8 degrees, shrunk, cropped and saved again
    photo = Image.open(paths[QUERY_OF]).convert("RGB")
    w, h = photo.size
    turned = photo.rotate(8, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(90, 110, 90))
    query = root / "holiday photo.jpg"
    turned.crop((int(0.05 * w), int(0.04 * h), int(0.97 * w), int(0.95 * h))).resize(
        (int(0.85 * 0.92 * w), int(0.85 * 0.91 * h)), Image.Resampling.LANCZOS).save(query, quality=90)
    notes = root / "notes.txt"
    notes.write_text("this is not a photo")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(root / "x.glx", writable=True, token=TOKEN)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "query": query, "notes": notes, "expected": names[QUERY_OF],
               "add": paths[QUERY_OF + 1], "index": root / "x.glx"}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory: pytest.TempPathFactory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    assert driver.save_screenshot(str(target)), f"no screenshot saved to {target}"
    print(f"\nscreenshot: {target}")
    copy_to = os.environ.get("GLOCAL_SCREENSHOTS", "/tmp/web_screenshots")
    if copy_to:
        folder = Path(copy_to)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(target, folder / name)
    return target


def _wait(driver, condition, what: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def _new_results(driver, after: str | None):
    """The result cards once a search newer than ``after`` (the grid's ``data-ready``) has rendered."""
    def ready(d):
        stamp = d.find_element("id", "results").get_attribute("data-ready")
        return stamp and stamp != after and d.find_elements("css selector", "#results li.card")

    return _wait(driver, ready, "the results")


def _message(driver, containing: str) -> str:
    """The page's message once it contains ``containing`` (the whole text, for the assertions)."""
    def shown(d):
        text = d.find_element("id", "message").is_displayed() and d.find_element("id", "message-text").text
        return text if text and containing in text else False

    return _wait(driver, shown, f"a message with {containing!r}")


def test_search_by_photo_then_see_the_matches(browser, site, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    browser.get(site["url"] + "/")
    _wait(browser, lambda d: "images" in d.find_element("id", "facts").text, "the index facts")
    facts = browser.find_element("id", "facts").text
    assert f"{N} images" in facts and "method" in facts and "on disk" in facts and "writable" in facts

    browser.find_element("id", "query-file").send_keys(str(site["query"]))
    cards = _new_results(browser, None)
    assert cards[0].get_attribute("data-name") == site["expected"]
    assert "inliers" in cards[0].text and "score" in cards[0].text
    assert browser.find_element("id", "progress").is_displayed() is False  # the progress is gone when done
    _wait(browser, lambda d: d.execute_script(
        "const i = [...document.querySelectorAll('#results li.card img')];"
        "return i.length === arguments[0] && i.every((e) => e.complete && e.naturalWidth > 0)", N),
        "every thumbnail")
    _shot(browser, tmp_path, "results_grid.png")

    # a box dragged on the preview: a new search inside it, the same image first
    canvas = browser.find_element("id", "query-canvas")
    cw, ch = canvas.size["width"], canvas.size["height"]
    stamp = browser.find_element("id", "results").get_attribute("data-ready")
    ActionChains(browser).move_to_element_with_offset(canvas, int(-0.3 * cw), int(-0.3 * ch)).click_and_hold() \
        .move_by_offset(int(0.6 * cw), int(0.6 * ch)).release().perform()
    cards = _new_results(browser, stamp)
    assert "inside the box" in browser.find_element("id", "results-title").text
    box = [float(v) for v in browser.find_element("id", "box-text").text.split(":")[1].strip(" px.").split(",")]
    assert box[0] < box[2] and box[1] < box[3]  # shown in original pixels
    assert cards[0].get_attribute("data-name") == site["expected"]
    inliers = int(cards[0].text.split("·")[1].split()[0])
    assert inliers > 0

    # the calibrated yes/no, when the service sends one, is a badge on the card
    badges = browser.execute_script(
        "return [true, false, undefined].map((v) => card({index: 0, name: 'x', score: 1, inliers: 2, verified: v}, 1)"
        ".querySelector('.badge')).map((b) => b && b.textContent)")
    assert badges == ["verified", "not verified", None]

    cards[0].click()
    canvas = _wait(browser, lambda d: d.find_element("id", "match-canvas").get_attribute("data-drawn")
                   and d.find_element("id", "match-canvas"), "the match view")
    assert int(canvas.get_attribute("data-drawn")) == inliers
    # the box went to the server in original pixels: the dragged 20%..80% of the photo, and the query ends of
    # the matches the server found lie inside it
    frac, inside = browser.execute_script(
        "const b = state.box, w = state.img.naturalWidth, h = state.img.naturalHeight;"
        "return [[b[0] / w, b[1] / h, b[2] / w, b[3] / h], state.open.matches.every(([x, y]) =>"
        " x >= b[0] - 1 && x <= b[2] + 1 && y >= b[1] - 1 && y <= b[3] + 1)]")
    assert all(abs(f - e) < 0.03 for f, e in zip(frac, (0.2, 0.2, 0.8, 0.8))), frac
    assert inside
    assert f"{inliers} inlier matches drawn" in browser.find_element("id", "match-note").text
    assert canvas.size["width"] > 400 and canvas.size["height"] > 150
    shot = _shot(browser, tmp_path, "match_view.png")
    assert shot.stat().st_size > 10_000
    browser.find_element("id", "match-close").click()
    assert not browser.find_element("id", "match-view").is_displayed()


def test_errors_are_readable_and_edits_need_the_token(browser, site, tmp_path: Path) -> None:
    browser.get(site["url"] + "/")
    _wait(browser, lambda d: "images" in d.find_element("id", "facts").text, "the index facts")
    browser.find_element("id", "query-file").send_keys(str(site["notes"]))
    text = _message(browser, "HTTP 400")
    assert "HTTP 400" in text and "notes.txt" in text and "not an image" in text, text
    _shot(browser, tmp_path, "error_message.png")
    browser.find_element("id", "message-close").click()

    browser.find_element("id", "query-file").send_keys(str(site["query"]))
    cards = _new_results(browser, None)
    name = cards[0].get_attribute("data-name")
    cards[0].click()
    _wait(browser, lambda d: d.find_element("id", "match-canvas").get_attribute("data-drawn"), "the match view")
    browser.find_element("id", "match-remove").click()  # no token typed: the server's 401 reason is shown
    text = _message(browser, "HTTP 401")
    assert "HTTP 401" in text and "Bearer" in text, text
    assert browser.find_element("id", "match-view").is_displayed()

    browser.find_element("id", "match-close").click()
    # a result whose picture the server cannot give: a placeholder with the server's reason
    browser.execute_script("document.getElementById('results').append("
                           "card({index: 999, name: 'gone', score: 0, inliers: 0}, 99))")
    placeholder = _wait(browser, lambda d: [e.text for e in d.find_elements("css selector", "#results .placeholder")
                                            if "no image number 999" in e.text], "the placeholder")
    assert placeholder[0].startswith("picture unavailable: no image number 999 in the index")
    browser.find_element("css selector", "#edit summary").click()
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("id", "add-files").send_keys(str(site["add"]))
    browser.find_element("id", "add-name").send_keys("added in the browser")
    browser.find_element("id", "add-button").click()
    line = _wait(browser, lambda d: d.find_elements("css selector", "#add-log li"), "the add log")[0]
    assert line.get_attribute("class") == "good" and f"added in the browser as image number {N}" in line.text
    _wait(browser, lambda d: d.find_element("id", "facts").get_attribute("data-images") == str(N + 1),
          "the header to count the added image")

    cards[0].click()
    _wait(browser, lambda d: d.find_element("id", "match-canvas").get_attribute("data-drawn"), "the match view")
    browser.find_element("id", "match-remove").click()
    assert _message(browser, "Removed") == f"Removed {name} from the index."
    assert name not in [c.get_attribute("data-name") for c in browser.find_elements("css selector", "#results li")]
    _wait(browser, lambda d: d.find_element("id", "facts").get_attribute("data-images") == str(N), "the header")
