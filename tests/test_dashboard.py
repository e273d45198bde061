"""The web dashboard in a real headless Chromium against the whole service (conftest `service`).

Screenshots of the main states land in test-output/dashboard/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from common.devkit.image_server import ImageServer
from service_harness import Service, wait_for

pytestmark = pytest.mark.slow

from browser_harness import chromium, js, wait  # noqa: E402  (skips the module without Chromium)
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402

SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "dashboard"
QUERY = "해바라기"  # the corpus target in Korean: reaches done in seconds
DESKTOP = (1280, 900)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium(DESKTOP) as driver:
        yield driver


def shot(browser: WebDriver, name: str, full_page: bool = False) -> None:
    """Save a screenshot; `full_page` grows the window to the page's height for the picture."""
    width, height = browser.get_window_size()["width"], browser.get_window_size()["height"]
    if full_page:
        page_height = js(browser, "return document.documentElement.scrollHeight")
        browser.set_window_size(width, min(max(height, page_height + 140), 5000))
    try:
        # Let a resized page lay out and paint its images before the picture is taken (those it shows:
        # a lazy image the image filter hides never loads).
        browser.execute_async_script("const done = arguments[0]; Promise.all([...document.images]"
                                     ".filter(i => i.src && i.getClientRects().length)"
                                     ".map(i => i.decode().catch(() => null)))"
                                     ".then(() => requestAnimationFrame(() => requestAnimationFrame(done)));")
        browser.save_screenshot(str(SHOTS / f"{name}.png"))
    finally:
        if full_page:
            browser.set_window_size(width, height)


def open_page(browser: WebDriver, url: str) -> None:
    browser.get(url)
    wait(browser, lambda b: js(b, "return document.body.dataset.loaded === 'true'"), f"{url} to load its data")


def row_status(browser: WebDriver, job_id: str) -> str | None:
    return js(browser, "const r = document.querySelector(`#jobs tr[data-id='${arguments[0]}']`);"
                       "return r ? r.dataset.status : null;", job_id)


def row(browser: WebDriver, job_id: str) -> Any:
    return browser.find_element(By.CSS_SELECTOR, f"#jobs tr[data-id='{job_id}']")


def click_in_row(browser: WebDriver, job_id: str, selector: str) -> None:
    """Click a row's button once it is there; a row redrawn between the look-up and the click is looked up again."""
    def clicked(b: WebDriver) -> bool:
        try:
            b.find_element(By.CSS_SELECTOR, f"#jobs tr[data-id='{job_id}'] {selector}").click()
            return True
        except (NoSuchElementException, StaleElementReferenceException):
            return False
    wait(browser, clicked, f"{selector} in the row of {job_id}", 30)


def banner_text(browser: WebDriver) -> str:
    return str(js(browser, "const b = document.getElementById('banner'); return b.hidden ? '' : b.textContent;"))


def fill(browser: WebDriver, values: dict[str, str]) -> None:
    for name, value in values.items():
        field = browser.find_element(By.ID, f"f-{name}")
        if field.tag_name == "select":
            field.find_element(By.CSS_SELECTOR, f"option[value='{value}']").click()
        else:
            field.clear()
            field.send_keys(value)


@pytest.fixture(scope="module")
def form_job(browser: WebDriver, service: Service) -> dict[str, Any]:
    """A job started from the form with a Korean query, watched in the history until done."""
    browser.set_window_size(*DESKTOP)
    open_page(browser, service.url)
    fill(browser, {"query": QUERY, "limit": "30", "output": "dash-sunflower", "source": "naver", "select": "query"})
    shot(browser, "01-form")
    browser.find_element(By.ID, "start").click()
    link = wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "#form-message a")), "the job's link")
    job_id = link.get_attribute("href").rstrip("/").split("/")[-1]
    wait(browser, lambda b: row_status(b, job_id), "the new job in the history", 10)
    shot(browser, "02-history-submitted")
    wait(browser, lambda b: row_status(b, job_id) in {"done", "failed", "cancelled"}, "the job to finish", 180)
    shot(browser, "03-history-done")
    return service.job(job_id)


def test_a_job_started_from_the_form_reaches_done_in_the_history(browser: WebDriver, form_job: dict[str, Any]) -> None:
    assert form_job["status"] == "done", form_job["error"]
    assert form_job["query"] == QUERY and form_job["output"] == "dash-sunflower" and form_job["limit"] == 30
    tr = row(browser, form_job["id"])
    assert tr.find_element(By.CSS_SELECTOR, ".status").text == "done"
    assert tr.find_element(By.CSS_SELECTOR, "td.kept").text == f"{form_job['count']} / 30"
    query = tr.find_element(By.CSS_SELECTOR, "td.query [lang='ko']")
    assert query.text == QUERY
    assert "done" in tr.find_element(By.CSS_SELECTOR, ".progress-text").text
    # The page is UTF-8 and says so.
    assert js(browser, "return document.characterSet") == "UTF-8"


def test_the_job_page_shows_chart_clusters_images_viewer_and_log(browser: WebDriver, service: Service,
                                                                 form_job: dict[str, Any]) -> None:
    open_page(browser, service.url)
    row(browser, form_job["id"]).find_element(By.LINK_TEXT, "View").click()
    wait(browser, EC.url_contains(f"/jobs/{form_job['id']}"), "the job page")
    count = form_job["count"]
    wait(browser, lambda b: js(b, "const imgs = [...document.querySelectorAll('#image-grid img')];"
                                  "return imgs.length === arguments[0] && imgs.every(i => i.complete && i.naturalWidth > 0);",
                               count), f"{count} thumbnails to load")
    assert browser.find_element(By.ID, "job-title").text == QUERY
    assert browser.find_element(By.CSS_SELECTOR, "#job-status .status").text == "done"

    bars = browser.find_elements(By.CSS_SELECTOR, "#drop-chart li")
    drops = sorted(form_job["drop_counts"].items(), key=lambda kv: (-kv[1], kv[0]))
    assert [(b.get_attribute("data-reason"), b.find_element(By.CSS_SELECTOR, ".hbar-count").text) for b in bars] == \
        [(reason, str(n)) for reason, n in drops]
    widest = js(browser, "return document.querySelector('#drop-chart .hbar-fill').style.width")
    assert widest == "100%"

    result = form_job["result"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#cluster-table tbody tr")
    assert len(rows) == len(result["clusters"])
    chosen = browser.find_element(By.CSS_SELECTOR, "#cluster-table tr.chosen")
    assert chosen.get_attribute("data-cluster") == str(result["chosen_cluster"]) and "kept" in chosen.text
    assert result["selection_reason"] in browser.find_element(By.ID, "selection-reason").text

    archive = browser.find_element(By.ID, "archive-link")
    assert archive.is_displayed() and archive.get_attribute("href").endswith(f"/api/jobs/{form_job['id']}/archive")
    response = requests.get(archive.get_attribute("href"), timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/zip"

    wait(browser, lambda b: "done: saved" in b.find_element(By.ID, "log-text").text, "the log")
    shot(browser, "04-job-page", full_page=True)

    browser.find_elements(By.CSS_SELECTOR, "#image-grid .thumb")[0].click()
    wait(browser, lambda b: js(b, "const i = document.getElementById('viewer-img');"
                                  "return document.getElementById('viewer').open && i.complete && i.naturalWidth > 0"),
         "the full-size image")
    first = service.api("GET", f"/api/jobs/{form_job['id']}/images").json()["images"][0]
    viewer = browser.find_element(By.ID, "viewer")
    assert first["file"] in viewer.find_element(By.ID, "viewer-title").text
    facts = viewer.find_element(By.ID, "viewer-facts").text
    assert f"{first['manifest']['query_similarity']:.3f}" in facts and "sharpness" in facts
    assert js(browser, "return document.getElementById('viewer-img').naturalWidth") == first["manifest"]["width"]
    shot(browser, "05-image-viewer")
    viewer.send_keys(Keys.ARROW_RIGHT)
    wait(browser, lambda b: "img_0002" in b.find_element(By.ID, "viewer-title").text, "the next image")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait(browser, lambda b: not js(b, "return document.getElementById('viewer').open"), "the viewer to close", 5)


def test_the_log_link_opens_the_job_log(browser: WebDriver, service: Service, form_job: dict[str, Any]) -> None:
    open_page(browser, service.url)
    row(browser, form_job["id"]).find_element(By.LINK_TEXT, "Log").click()
    wait(browser, EC.url_contains("#log"), "the log link")
    wait(browser, lambda b: "searching naver" in b.find_element(By.ID, "log-text").text, "the log text")
    assert QUERY in browser.find_element(By.ID, "log-text").text


def slow_urls(image_server: ImageServer, n: int) -> list[str]:
    return [image_server.url(f"/slow/25?dashboard={i}") for i in range(n)]


def test_cancel_a_running_job_from_the_history(browser: WebDriver, service: Service, image_server: ImageServer) -> None:
    job_id = service.submit(query="느린 작업", limit=10, source="urls", urls=slow_urls(image_server, 40),
                            output="dash-slow")
    open_page(browser, service.url)
    wait(browser, lambda b: row_status(b, job_id) == "running"
         and "downloading" in row(b, job_id).find_element(By.CSS_SELECTOR, ".progress-text").text,
         "the slow job to be downloading", 60)
    shot(browser, "06-history-running")
    click_in_row(browser, job_id, "button.cancel")
    wait(browser, lambda b: row_status(b, job_id) == "cancelled", "the job to be cancelled", 30)
    shot(browser, "07-history-cancelled")
    assert service.job(job_id)["status"] == "cancelled"
    assert "cancelled while downloading" in row(browser, job_id).find_element(By.CSS_SELECTOR, ".progress-text").text
    assert row(browser, job_id).find_elements(By.CSS_SELECTOR, "button.delete")


def test_invalid_form_shows_the_api_messages_next_to_the_fields(browser: WebDriver, service: Service,
                                                                form_job: dict[str, Any]) -> None:
    body = {"query": "고양이", "limit": 0, "output": "../x", "source": "naver", "select": "query"}
    expected = {d["field"]: d["message"] for d in service.api("POST", "/api/jobs", json=body).json()["detail"]}
    assert set(expected) == {"limit", "output"}
    open_page(browser, service.url)
    fill(browser, {"query": body["query"], "limit": "0", "output": body["output"]})
    browser.find_element(By.ID, "start").click()
    wait(browser, lambda b: b.find_element(By.ID, "err-limit").text, "the limit's message")
    assert browser.find_element(By.ID, "err-limit").text == expected["limit"]
    assert browser.find_element(By.ID, "err-output").text == expected["output"]
    assert browser.find_element(By.ID, "f-limit").get_attribute("aria-invalid") == "true"
    assert browser.find_element(By.ID, "err-query").text == ""
    assert "2 fields to fix" in banner_text(browser)
    shot(browser, "08-validation-error")

    # A taken output name (409) is shown at the output field too.
    fill(browser, {"limit": "10", "output": form_job["output"]})
    browser.find_element(By.ID, "start").click()
    wait(browser, lambda b: "already holds files" in b.find_element(By.ID, "err-output").text, "the conflict")
    assert browser.find_element(By.ID, "err-limit").text == ""


def test_api_errors_and_a_dead_backend_show_in_the_banner(browser: WebDriver, service: Service) -> None:
    missing = str(uuid.uuid4())
    browser.get(f"{service.url}/jobs/{missing}")
    wait(browser, lambda b: f"No job {missing}" in banner_text(b), "the not-found message")
    assert browser.find_element(By.ID, "job-title").text == "Job not found"

    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/api/*"]})
    try:
        browser.get(service.url)
        wait(browser, lambda b: "Cannot reach the API server" in banner_text(b), "the unreachable message")
        shot(browser, "09-backend-unreachable")
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
    wait(browser, lambda b: banner_text(b) == "" and js(b, "return document.body.dataset.loaded === 'true'"),
         "the page to recover by itself", 20)


def test_phone_width_has_no_horizontal_overflow(browser: WebDriver, service: Service, form_job: dict[str, Any]) -> None:
    browser.set_window_size(390, 844)
    try:
        overflow = ("return [document.documentElement.scrollWidth, document.body.scrollWidth,"
                    " document.documentElement.clientWidth]")
        open_page(browser, service.url)
        widths = js(browser, overflow)
        assert max(widths[:2]) <= widths[2], widths
        assert js(browser, "return getComputedStyle(document.querySelector('#jobs thead')).display") == "none"
        assert row(browser, form_job["id"]).is_displayed()
        shot(browser, "10-phone-history", full_page=True)
        open_page(browser, f"{service.url}/jobs/{form_job['id']}")
        wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#image-grid img")) == form_job["count"], "images")
        widths = js(browser, overflow)
        assert max(widths[:2]) <= widths[2], widths
        shot(browser, "11-phone-job", full_page=True)
    finally:
        browser.set_window_size(*DESKTOP)


def shown_images(browser: WebDriver) -> list[str]:
    """The files of the tiles the grid shows now (the filter hides the others), sorted."""
    return sorted(js(browser, "return [...document.querySelectorAll('#image-grid .thumb')]"
                              ".filter(t => t.offsetParent !== null).map(t => t.querySelector('img').alt)"))


def filter_buttons(browser: WebDriver, group: str) -> dict[str, Any]:
    """The filter's buttons of one group ('classes' or 'splits') by the value they select ('' for All)."""
    return {b.get_attribute("data-value") or "": b
            for b in browser.find_elements(By.CSS_SELECTOR, f"#filter-{group} button")}


def pressed(buttons: dict[str, Any]) -> list[str]:
    return [value for value, b in buttons.items() if b.get_attribute("aria-pressed") == "true"]


def polls(browser: WebDriver) -> int:
    return int(js(browser, "return Number(document.body.dataset.polls || 0)"))


def test_a_job_of_several_classes_shows_a_card_per_class_and_filters_its_images(
        browser: WebDriver, service: Service, scenario: Any, image_server: ImageServer) -> None:
    from test_classes_e2e import CLASSES, labelled_list

    lines, _ = labelled_list(scenario)
    # One picture that takes 8 s to come keeps the job downloading over several polls of the page
    # (it is too small to be kept).
    slow = f"{CLASSES[2]}\t{image_server.url('/slow/8?dashboard-classes')}"
    job_id = service.submit(queries=list(CLASSES), source="urls", urls=[*lines, slow], limit=20,
                            split=[0.6, 0.2, 0.2], output="dash-classes")
    open_page(browser, f"{service.url}/jobs/{job_id}")

    # While it runs: a card per class, and the filter's class buttons (All, then the classes in order).
    wait(browser, lambda b: len(filter_buttons(b, "classes")) == 1 + len(CLASSES), "the class filter")
    classes = filter_buttons(browser, "classes")
    assert [b.text for b in classes.values()] == ["All", *CLASSES] and pressed(classes) == [""]
    assert [b.text for b in filter_buttons(browser, "splits").values()] == ["All", "train", "val", "test"]
    cards = browser.find_elements(By.CSS_SELECTOR, "#class-cards .class-card")
    assert [c.get_attribute("data-label") for c in cards] == list(CLASSES)
    assert js(browser, "return document.getElementById('image-filter').hidden") is False
    shot(browser, "14-classes-running")

    # A class chosen while the page redraws on every poll stays chosen: the same buttons, still pressed.
    classes[CLASSES[1]].click()
    assert pressed(classes) == [CLASSES[1]]
    seen = polls(browser)
    wait(browser, lambda b: polls(b) >= seen + 2, "two more polls of the running job", 30)
    assert service.job(job_id)["status"] in {"queued", "running"}, "the job ended before the polls were seen"
    assert pressed(classes) == [CLASSES[1]]  # a redrawn button would be stale here
    assert pressed(filter_buttons(browser, "splits")) == [""]

    job = service.wait_status(job_id, {"done", "failed", "cancelled"})
    assert job["status"] == "done", job["error"]
    wait(browser, lambda b: js(b, "return document.querySelector('#job-status .status').textContent") == "done",
         "the page to see the job done")
    images = service.api("GET", f"/api/jobs/{job_id}/images").json()["images"]

    def files(label: str | None = None, split: str | None = None) -> list[str]:
        return sorted(i["file"] for i in images if label in (None, i["label"]) and split in (None, i["split"]))

    assert 0 < len(files(CLASSES[1])) < len(images)
    wait(browser, lambda b: shown_images(b) == files(CLASSES[1]), "only the chosen class's images")
    assert pressed(classes) == [CLASSES[1]]
    assert browser.find_element(By.ID, "images-count").text == f"{len(files(CLASSES[1]))} of {len(images)} images"
    tags = js(browser, "return [...document.querySelectorAll('#image-grid .thumb')].filter(t => !t.hidden)"
                       ".map(t => [...t.querySelectorAll('.tag')].map(s => s.textContent))")
    by_file = {i["file"]: i for i in images}
    assert sorted(tags) == sorted([by_file[f]["label"], by_file[f]["split"]] for f in files(CLASSES[1]))

    # The cards: kept as the API counts it, each split's count, and why the class's cluster was kept.
    cards = browser.find_elements(By.CSS_SELECTOR, "#class-cards .class-card")
    assert [(c.get_attribute("data-label"), int(c.find_element(By.CSS_SELECTOR, ".class-count").text)) for c in cards] \
        == [(c["label"], c["kept"]) for c in job["classes"]]
    for card, result in zip(cards, job["result"]["classes"], strict=True):
        splits = {s.get_attribute("data-split"): int(s.find_element(By.TAG_NAME, "strong").text)
                  for s in card.find_elements(By.CSS_SELECTOR, ".split-count")}
        assert splits == {name: result["splits"].get(name, 0) for name in ("train", "val", "test")}
        assert sum(splits.values()) == result["counts"]["kept"] == len(files(result["label"]))
        assert result["selection_reason"] in card.find_element(By.CSS_SELECTOR, ".class-reason").text
    assert js(browser, "return document.getElementById('job-warnings').hidden") is (not job["result"]["warnings"])
    rows = browser.find_elements(By.CSS_SELECTOR, "#cluster-table tbody tr")
    assert len(rows) == sum(len(c["clusters"]) for c in job["result"]["classes"])
    assert sorted((r.get_attribute("data-label"), r.get_attribute("data-cluster"))
                  for r in browser.find_elements(By.CSS_SELECTOR, "#cluster-table tr.chosen")) == \
        sorted((c["label"], str(c["chosen_cluster"])) for c in job["result"]["classes"]
               if c["chosen_cluster"] is not None)

    # The split selector narrows further; "All" classes with a split shows that split of every class.
    splits = filter_buttons(browser, "splits")
    splits["val"].click()
    wait(browser, lambda b: shown_images(b) == files(CLASSES[1], "val"), "the chosen class's val images")
    assert pressed(splits) == ["val"] and pressed(classes) == [CLASSES[1]]
    shot(browser, "15-classes-filtered", full_page=True)
    classes[""].click()
    wait(browser, lambda b: shown_images(b) == files(split="val"), "every class's val images")
    assert pressed(classes) == [""] and pressed(splits) == ["val"]

    # The viewer names the class and the split, and steps through the images the filter shows.
    shown = [f for f in (i["file"] for i in images) if f in set(files(split="val"))]
    browser.find_element(By.CSS_SELECTOR, f"#image-grid .thumb img[alt='{shown[0]}']").click()
    wait(browser, lambda b: js(b, "return document.getElementById('viewer').open"), "the viewer")
    viewer = browser.find_element(By.ID, "viewer")
    facts = dict(js(browser, "return [...document.querySelectorAll('#viewer-facts dt')]"
                             ".map(d => [d.textContent, d.nextElementSibling.textContent])"))
    assert facts["Class"] == by_file[shown[0]]["label"] and facts["Split"] == "val"
    assert viewer.find_element(By.ID, "viewer-title").text == f"{shown[0]} (1 of {len(shown)})"
    viewer.send_keys(Keys.ARROW_RIGHT)
    wait(browser, lambda b: b.find_element(By.ID, "viewer-title").text.startswith(f"{shown[1]} "), "the next val image")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait(browser, lambda b: not js(b, "return document.getElementById('viewer').open"), "the viewer to close", 5)

    browser.set_window_size(390, 844)
    try:
        widths = js(browser, "return [document.documentElement.scrollWidth, document.body.scrollWidth,"
                             " document.documentElement.clientWidth]")
        assert max(widths[:2]) <= widths[2], widths
        shot(browser, "16-phone-classes", full_page=True)
    finally:
        browser.set_window_size(*DESKTOP)


def test_the_form_sends_more_classes_a_split_and_balance(browser: WebDriver, service: Service) -> None:
    from test_classes_e2e import CLASSES

    open_page(browser, service.url)
    # Blank lines and spaces around a class are dropped; the query field is the first class.
    fill(browser, {"query": CLASSES[0], "queries": f"  {CLASSES[1]} \n\n{CLASSES[2]}\n", "limit": "5",
                   "output": "dash-form-classes", "source": "naver", "split": "0.8;x"})
    browser.find_element(By.ID, "start").click()
    wait(browser, lambda b: b.find_element(By.ID, "err-split").text, "the split's message", 5)
    assert "0.8,0.1,0.1" in browser.find_element(By.ID, "err-split").text
    assert browser.find_element(By.ID, "f-split").get_attribute("aria-invalid") == "true"
    assert not browser.find_elements(By.CSS_SELECTOR, "#form-message a")  # nothing was sent
    assert all(j["output"] != "dash-form-classes" for j in service.api("GET", "/api/jobs?per_page=100").json()["jobs"])

    fill(browser, {"split": "0.8, 0.2"})
    browser.find_element(By.ID, "f-balance").click()
    browser.find_element(By.ID, "start").click()
    link = wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "#form-message a")), "the job's link")
    job_id = link.get_attribute("href").rstrip("/").split("/")[-1]
    assert browser.find_element(By.ID, "err-split").text == ""
    job = service.job(job_id)
    try:
        assert job["queries"] == list(CLASSES) and job["query"] == ", ".join(CLASSES)
        dataset = job["options"]["dataset"]
        assert {k: dataset.get(k) for k in ("queries", "split", "seed", "balance")} == \
            {"queries": list(CLASSES), "split": [0.8, 0.2], "seed": 0, "balance": True}
        assert job["limit"] == 5 and job["output"] == "dash-form-classes" and job["source"] == "naver"
        wait(browser, lambda b: js(b, "const a = document.querySelector("
                                      "`#jobs tr[data-id='${arguments[0]}'] td.query a`); return a && a.textContent",
                                      job_id) == ", ".join(CLASSES),
             "the new job in the history, named by its classes", 10)
        assert js(browser, "return document.querySelector(`#jobs tr[data-id='${arguments[0]}'] td.kept`).textContent",
                  job_id).endswith(" / 3 × 5")  # the limit is per class
    finally:  # the classes were the point; the workers have other jobs to run
        service.api("POST", f"/api/jobs/{job_id}/cancel")
        service.wait_status(job_id, {"done", "failed", "cancelled"}, timeout_s=60)


def test_a_single_query_job_page_has_no_class_cards_and_no_filter(browser: WebDriver, service: Service,
                                                                  form_job: dict[str, Any]) -> None:
    open_page(browser, f"{service.url}/jobs/{form_job['id']}")
    count = form_job["count"]
    wait(browser, lambda b: len(shown_images(b)) == count, f"{count} thumbnails")
    assert js(browser, "return ['classes', 'image-filter', 'job-warnings']"
                       ".map(id => document.getElementById(id).offsetParent === null)") == [True, True, True]
    assert not browser.find_elements(By.CSS_SELECTOR, ".class-card, .thumb-tags, #image-grid .thumb[data-label]")
    assert browser.find_element(By.ID, "images-count").text == f"{count} images"
    facts = browser.find_element(By.ID, "job-facts").text
    assert "Classes" not in facts and "Split" not in facts and "dataset" not in facts


@pytest.fixture
def guarded_api(service: Service) -> Iterator[tuple[str, str]]:
    """A second API process-in-a-thread on the service's database, with a token required."""
    from werkzeug.serving import make_server

    from api import create_app
    from common.config import Settings

    secret = uuid.uuid4().hex
    settings = Settings(database_url=service.database_url, redis_url=service.redis_url,
                        data_root=service.data_root, api_tokens=secret)
    app = create_app({"CVDB_SETTINGS": settings, "SQLALCHEMY_DATABASE_URI": service.database_url})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", secret
    finally:
        server.shutdown()
        thread.join(10)


def test_a_401_asks_for_a_token_that_is_kept_and_sent(browser: WebDriver, guarded_api: tuple[str, str],
                                                      form_job: dict[str, Any]) -> None:
    url, secret = guarded_api
    assert requests.get(f"{url}/", timeout=10).status_code == 200  # the page itself is public
    assert requests.get(f"{url}/ui/index.js", timeout=10).status_code == 200
    assert requests.get(f"{url}/api/jobs", timeout=10).status_code == 401
    browser.get(url)
    try:
        wait(browser, lambda b: b.find_element(By.ID, "auth").is_displayed(), "the token box")
        assert "valid token" in banner_text(browser)
        shot(browser, "12-token-needed")
        browser.find_element(By.ID, "token-input").send_keys(secret, Keys.ENTER)
        wait(browser, lambda b: row_status(b, form_job["id"]) == "done", "the history with the token")
        assert banner_text(browser) == "" and not browser.find_element(By.ID, "auth").is_displayed()
        assert js(browser, "return localStorage.getItem('cvdb.apiToken')") == secret
        # Images and the zip cannot send the token: the API hands out signed links for them.
        open_page(browser, f"{url}/jobs/{form_job['id']}")
        wait(browser, lambda b: js(b, "const i = document.querySelector('#image-grid img');"
                                      "return i && i.src.includes('sig=') && i.naturalWidth > 0"), "a thumbnail")
        archive = browser.find_element(By.ID, "archive-link").get_attribute("href")
        assert "sig=" in archive
        download = requests.get(archive, timeout=30)  # what the browser fetches: no Authorization header
        assert download.status_code == 200 and download.content[:2] == b"PK"
    finally:
        js(browser, "localStorage.clear()")


def test_delete_one_job_then_clear_the_history(browser: WebDriver, service: Service, form_job: dict[str, Any]) -> None:
    open_page(browser, service.url)
    jobs = service.api("GET", "/api/jobs?per_page=100").json()["jobs"]
    victim = next(j for j in jobs if j["output"] == "dash-slow")
    click_in_row(browser, victim["id"], "button.delete")
    wait(browser, EC.alert_is_present(), "the confirmation", 5).accept()
    wait(browser, lambda b: row_status(b, victim["id"]) is None, "the deleted job to leave the table")
    assert service.api("GET", f"/api/jobs/{victim['id']}").status_code == 404

    wait_for(lambda: all(j["status"] in {"done", "failed", "cancelled"}
                         for j in service.api("GET", "/api/jobs?per_page=100").json()["jobs"]), 60, "jobs to finish")
    browser.find_element(By.ID, "clear-history").click()
    wait(browser, EC.alert_is_present(), "the confirmation", 5).accept()
    wait(browser, lambda b: b.find_element(By.ID, "jobs-empty").is_displayed(), "the empty history")
    assert "Removed" in browser.find_element(By.ID, "form-message").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
    assert service.api("GET", "/api/jobs").json()["total"] == 0
    shot(browser, "13-history-cleared")


def test_pages_are_public_and_api_errors_stay_json(service: Service) -> None:
    for path in ("/", f"/jobs/{uuid.uuid4()}", "/ui/style.css", "/ui/common.js"):
        response = requests.get(f"{service.url}{path}", timeout=10)
        assert response.status_code == 200, path
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert requests.get(f"{service.url}/", timeout=10).headers["Content-Type"] == "text/html; charset=utf-8"
    missing = requests.get(f"{service.url}/api/nope", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"

