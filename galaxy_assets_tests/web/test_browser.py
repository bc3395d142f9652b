"""End to end in real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium with the system browser and driver; nothing is downloaded at run time): the server
runs on a free loopback port in a thread over the mock survey captioned by the describer;
the test types a query, sees thumbnails, opens a detail view, follows "more like this",
reloads the shared URL, and takes a screenshot (copied to ``docs/search_page.png`` when
GALAXY_ASSETS_UPDATE_SCREENSHOT is set)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import polars as pl
import pytest

from galaxy_assets.search.query import GalaxySearch
from galaxy_assets.web.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "search_page.png"
WAIT_S = 30


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the browser test needs Debian's Chromium and its "
            "driver; install them with `sudo apt-get install -y chromium chromium-driver`",
            pytrace=False,
        )


@pytest.fixture
def captioned_index(tmp_path, mock_survey):
    """The mock survey indexed with captions from the offline describer, plus its caption
    store (for the prompt in the detail view)."""
    from galaxy_assets.captioning.base import CaptionRequest
    from galaxy_assets.captioning.describer import MorphologyDescriber
    from galaxy_assets.captioning.store import CaptionStore, results_to_frames
    from galaxy_assets.search.pixels import Cutout, read_cutouts
    from galaxy_assets.search.table import build_shard_rows, upsert_shard

    uri = tmp_path / "lancedb"
    store = CaptionStore(tmp_path / "captions")
    describer = MorphologyDescriber(seed=0)
    for shard in mock_survey.shards:
        manifest = mock_survey.manifests[shard]
        cuts = read_cutouts(manifest)
        requests = [
            CaptionRequest(oid, cut.image, cut.bands)
            for oid, cut in cuts.items()
            if isinstance(cut, Cutout)
        ]
        captions, failures = results_to_frames(
            describer.caption(requests), describer.backend, describer.model_id,
            describer.prompt_sha,
        )
        store.add(captions, failures)
        rows = build_shard_rows(shard, manifest, mock_survey.vectors[shard], None, captions)
        upsert_shard(uri, shard, rows)
    return uri, tmp_path / "captions"


class _Server:
    """uvicorn on a socket bound to 127.0.0.1:0, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + WAIT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def browser():
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _thumbnails_loaded(driver) -> int:
    """How many result thumbnails have finished loading with real pixels (0 if any failed)."""
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll('#grid .card img')];"
        "if (!imgs.length || document.querySelector('#grid .nopix')) return 0;"
        "return imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0;"
    )


@pytest.mark.slow
def test_search_detail_and_more_like_this_in_chromium(
    browser, captioned_index, text_embedder, aligner, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    uri, store = captioned_index
    engine = GalaxySearch(uri, text_embedder=text_embedder, aligner=aligner)
    app = create_app(
        engine, caption_store=store, thumbnail_dir=tmp_path / "thumbs", refresh_seconds=None,
        k_rerank=7,
    )
    wait = WebDriverWait(browser, WAIT_S)
    with _Server(app) as base:
        browser.get(base + "/")
        wait.until(lambda d: "galaxies" in d.find_element(By.ID, "status").text)
        # the re-rank depth box starts at the server's depth (the settings' search.k_rerank)
        assert browser.find_element(By.ID, "k_rerank").get_attribute("value") == "7"
        examples = browser.find_elements(By.CSS_SELECTOR, "#examples button")
        assert len(examples) >= 3

        box = browser.find_element(By.ID, "q")
        box.send_keys("smooth elliptical galaxy with a bright core")
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: _thumbnails_loaded(d) >= 12)
        cards = browser.find_elements(By.CSS_SELECTOR, "#grid .card")
        assert len(cards) == 24  # one page
        query = parse_qs(urlparse(browser.current_url).query)
        assert query["q"] == ["smooth elliptical galaxy with a bright core"]
        first = cards[0]
        first_id = first.get_attribute("data-object-id")
        caption = first.find_element(By.CSS_SELECTOR, ".thumb").get_attribute("title")
        expected = pl.DataFrame(
            engine.search_text("smooth elliptical galaxy with a bright core", 1).frame
        )
        assert first_id == expected["object_id"][0]
        assert caption == expected["caption"][0] and len(caption) > 20

        # "load more" appends the next page
        browser.find_element(By.ID, "more").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == 48)

        # hover shows the caption; screenshot of the page as a user sees it
        browser.execute_script("window.scrollTo(0, 0)")
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(browser).move_to_element(
            browser.find_elements(By.CSS_SELECTOR, "#grid .card .thumb")[1]
        ).perform()
        time.sleep(0.3)
        shot = tmp_path / "page.png"
        browser.save_screenshot(str(shot))
        assert 10_000 < shot.stat().st_size < 2_000_000
        if os.environ.get("GALAXY_ASSETS_UPDATE_SCREENSHOT"):  # tracked file: only on request
            shutil.copyfile(shot, SCREENSHOT)

        # the detail view: lineage, caption with model and prompt, viewer link
        browser.find_elements(By.CSS_SELECTOR, "#grid .card .thumb")[0].click()
        detail = wait.until(ec.visibility_of_element_located((By.ID, "detail")))
        wait.until(lambda d: d.find_elements(By.ID, "viewer-link"))
        text = detail.text
        assert first_id in text
        assert "Lineage" in text and "aligner_version" in text and "table_version" in text
        assert "morphology-describer-v1" in text
        link = browser.find_element(By.ID, "viewer-link").get_attribute("href")
        assert link.startswith("https://www.legacysurvey.org/viewer?ra=")
        assert parse_qs(urlparse(browser.current_url).query)["detail"] == [first_id]

        # "more like this" from the detail view runs an object query, in the URL too, and
        # without re-ranking even when it is ticked (a galaxy has no text to rate against)
        browser.execute_script("document.getElementById('rerank').checked = true")
        browser.find_element(By.ID, "detail-more").click()
        wait.until(lambda d: parse_qs(urlparse(d.current_url).query).get("object") == [first_id])
        wait.until(lambda d: d.find_element(By.ID, "query-label").text == f"object:{first_id}")
        wait.until(lambda d: _thumbnails_loaded(d) >= 12)
        ids = [c.get_attribute("data-object-id")
               for c in browser.find_elements(By.CSS_SELECTOR, "#grid .card")]
        assert first_id not in ids
        assert ids[:5] == engine.search_object(first_id, 5).frame["object_id"].to_list()

        # the shared URL reproduces the search in a fresh page load
        shared = browser.current_url
        browser.get("about:blank")
        browser.get(shared)
        wait.until(lambda d: d.find_element(By.ID, "query-label").text == f"object:{first_id}")
        again = [c.get_attribute("data-object-id")
                 for c in browser.find_elements(By.CSS_SELECTOR, "#grid .card")]
        assert again == ids

        # an error is shown as a message, not a broken page
        browser.get(base + "/?q=spiral&filter=nope%3C3")
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "nope" in browser.find_element(By.ID, "error").text


@pytest.mark.slow
def _slow_down(engine, text: str = "slow query", seconds: float = 4) -> None:
    """Make ``engine`` answer the text query ``text`` ``seconds`` late (a VLM re-ranking, say)."""
    real = engine.search

    def search(query, k, **kwargs):
        if any(getattr(t, "value", "") == text for t in query):
            time.sleep(seconds)
        return real(query, k, **kwargs)

    engine.search = search


def test_a_new_search_replaces_one_still_running(text_engine, browser):
    """Clicking an example while a slow search (a VLM re-ranking, say) runs shows the
    example's results, and the slow answer that comes back later is dropped (the page used
    to ignore the click and keep the old results under the new URL)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _slow_down(text_engine)
    app = create_app(text_engine, refresh_seconds=None)
    with _Server(app) as base:
        browser.get(f"{base}/?q=slow+query")
        WebDriverWait(browser, WAIT_S).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#examples button")
        )
        time.sleep(0.5)  # the slow search is under way
        example = browser.find_elements(By.CSS_SELECTOR, "#examples button")[0]
        wanted = example.text
        example.click()
        label = browser.find_element(By.ID, "query-label")
        WebDriverWait(browser, WAIT_S).until(lambda d: label.text == wanted)
        time.sleep(5)  # the slow answer has come back by now
        assert label.text == wanted
        assert parse_qs(urlparse(browser.current_url).query)["q"] == [wanted]
        assert browser.find_elements(By.CSS_SELECTOR, "#grid .card")


@pytest.mark.slow
def test_thumbnails_are_drawn_at_the_size_the_page_asks(browser, survey_engine, tmp_path):
    """The grid asks for 192 px thumbnails and the detail view for 256 px: the thumbnail URL
    already carries ``?v=<table version>``, and appending ``?size=`` to it made the server
    read v="6?size=192" and draw its default 128 px."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(survey_engine, thumbnail_dir=tmp_path / "thumbs", refresh_seconds=None)
    wait = WebDriverWait(browser, WAIT_S)
    with _Server(app) as base:
        browser.get(base + "/?q=spiral+arms")
        wait.until(lambda d: _thumbnails_loaded(d) >= 1)
        src, width = browser.execute_script(
            "const i = document.querySelector('#grid .card img');"
            "return [i.getAttribute('src'), i.naturalWidth];")
        query = parse_qs(urlparse(src).query)
        assert query.get("size") == ["192"] and query["v"][0].isdigit(), src
        assert width == 192
        browser.find_elements(By.CSS_SELECTOR, "#grid .card .thumb")[0].click()
        wait.until(lambda d: d.execute_script(
            "const i = document.querySelector('#detail-body .detail-head img');"
            "return i && i.complete && i.naturalWidth > 0"))
        assert browser.execute_script(
            "return document.querySelector('#detail-body .detail-head img').naturalWidth") == 256


@pytest.mark.slow
def test_an_upload_that_replaces_a_running_search_leaves_search_usable(
    browser, survey_engine, survey_index, tmp_path
):
    """An upload started while a slow text search runs supersedes it; the text search's
    answer is dropped and, with it, the reset of the Search button: it stayed disabled."""
    from astropy.io import fits
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from galaxy_assets.search.pixels import Cutout, read_cutouts

    _slow_down(survey_engine)
    _, survey = survey_index
    cut = next(c for c in read_cutouts(survey.manifests[survey.shards[0]].head(1)).values()
               if isinstance(c, Cutout))
    hdu = fits.PrimaryHDU(cut.image)
    hdu.header["BANDS"] = ",".join(cut.bands)
    upload = tmp_path / "q.fits"
    hdu.writeto(upload)
    app = create_app(survey_engine, thumbnail_dir=tmp_path / "thumbs", refresh_seconds=None)
    wait = WebDriverWait(browser, WAIT_S)
    with _Server(app) as base:
        browser.get(f"{base}/?q=slow+query")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples button"))
        time.sleep(0.5)  # the slow search is under way
        browser.find_element(By.ID, "toggle-advanced").click()
        browser.find_element(By.ID, "upload").send_keys(str(upload))
        browser.find_element(By.ID, "upload-go").click()
        wait.until(lambda d: "upload:" in d.find_element(By.ID, "query-label").text)
        time.sleep(5)  # the slow answer has come back (and been dropped) by now
        assert "upload:" in browser.find_element(By.ID, "query-label").text
        assert browser.find_element(By.ID, "go").is_enabled()
        # and the button searches again
        box = browser.find_element(By.ID, "q")
        box.clear()
        box.send_keys("ring galaxy")
        browser.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_element(By.ID, "query-label").text.startswith("ring"))
