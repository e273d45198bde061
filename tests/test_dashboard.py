"""The web dashboard in a real headless Chromium against the whole service (conftest `service`).

Screenshots of the main states land in test-output/dashboard/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import re
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
PHONE = (390, 844)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium(DESKTOP) as driver:
        yield driver


def assert_fits_a_phone(browser: WebDriver, shot_name: str | None = None) -> None:
    """At phone width the page as it is now scrolls only vertically (then back to desktop width)."""
    browser.set_window_size(*PHONE)
    try:
        widths = js(browser, "return [document.documentElement.scrollWidth, document.body.scrollWidth,"
                             " document.documentElement.clientWidth]")
        assert max(widths[:2]) <= widths[2], widths
        if shot_name:
            shot(browser, shot_name, full_page=True)
    finally:
        browser.set_window_size(*DESKTOP)


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
    assert "dataset" not in form_job["options"]  # empty "Example pictures" and "Exclude" send nothing
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
    browser.set_window_size(*PHONE)
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

    assert_fits_a_phone(browser, "16-phone-classes")


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

# -- steering and search ---------------------------------------------------------------------------

SEARCH_TEXT = "sunflower"


@pytest.fixture(scope="module")
def steered_job(service: Service, scenario: Any) -> str:
    """A vague query steered by 3 example pictures and a negative prompt (as in test_service), not waited for."""
    from test_steer_e2e import VAGUE, targets

    from common.devkit import corpus

    return service.submit(query=VAGUE, like=targets(scenario, 3), exclude=[corpus.DISTRACTOR], limit=30,
                          output="dash-steered")


def hit_files(browser: WebDriver) -> list[str]:
    """The files of the search's result tiles, in the order shown."""
    return js(browser, "return [...document.querySelectorAll('#search-results .thumb')].map(t => t.dataset.file)")


def search_title(browser: WebDriver) -> str:
    """The results header ('Results for ... (N) · Clear'), '' while it is not shown."""
    return str(js(browser, "const h = document.getElementById('search-head');"
                           "return h.offsetParent === null ? '' : h.textContent.replace(/\\s+/g, ' ').trim();"))


def hits_loaded(browser: WebDriver, n: int) -> bool:
    return bool(js(browser, "const imgs = [...document.querySelectorAll('#search-results .thumb img')];"
                            "return imgs.length === arguments[0] && imgs.every(i => i.complete && i.naturalWidth > 0);",
                   n))


def search_message(browser: WebDriver) -> str:
    return str(browser.find_element(By.ID, "search-message").text)


def test_a_steered_job_shows_its_steering_and_is_searched_by_text(browser: WebDriver, service: Service,
                                                                   scenario: Any, steered_job: str) -> None:
    from test_steer_e2e import targets

    from common.devkit import corpus

    open_page(browser, f"{service.url}/jobs/{steered_job}")
    # The examples and the negative prompt come from the request: shown while the job runs too.
    like = targets(scenario, 3)
    links = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#job-facts .example-links a"), "the examples")
    assert [a.get_attribute("href") for a in links] == like and [a.text for a in links] == like
    assert all(a.get_attribute("rel") == "noopener noreferrer nofollow" for a in links)
    facts = dict(js(browser, "return [...document.querySelectorAll('#job-facts dt')]"
                             ".map(d => [d.textContent, d.nextElementSibling.textContent])"))
    assert facts["Exclude"] == corpus.DISTRACTOR

    job = service.wait_status(steered_job, {"done", "failed", "cancelled"})
    assert job["status"] == "done", job["error"]
    wait(browser, lambda b: b.find_element(By.ID, "search-form").is_displayed(), "the search panel once done", 30)
    kept = job["count"]
    wait(browser, lambda b: len(shown_images(b)) == kept, f"{kept} thumbnails")

    # The clusters: each one's example similarity, and the groups the negative prompt dropped.
    clusters = job["result"]["clusters"]
    excluded = {str(c["id"]): c["excluded_by"] for c in clusters if c.get("excluded_by")}
    assert excluded, clusters
    assert browser.find_element(By.ID, "like-column").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "#cluster-table tbody tr")
    assert [r.get_attribute("data-cluster") for r in rows] == [str(c["id"]) for c in clusters]
    shown_like = [float(r.find_element(By.CSS_SELECTOR, "td.like").text) for r in rows]
    assert shown_like == pytest.approx([c["like_similarity"] for c in clusters], abs=0.00051)
    marked = {r.get_attribute("data-cluster"): r.find_element(By.CSS_SELECTOR, ".excluded-tag").text
              for r in browser.find_elements(By.CSS_SELECTOR, "#cluster-table tr.excluded")}
    assert marked == {cid: f"excluded: matches '{prompt}'" for cid, prompt in excluded.items()}
    assert corpus.DISTRACTOR in excluded.values()
    assert "excluded" in job["drop_counts"]
    bar = browser.find_element(By.CSS_SELECTOR, "#drop-chart li[data-reason='excluded'] .hbar-label")
    assert "negative prompt" in bar.get_attribute("title")  # /api/reasons explains it

    # Search by text, Enter in the box: the hits replace the grid, best first, as the API ranks them.
    box = browser.find_element(By.ID, "search-text")
    box.send_keys(SEARCH_TEXT, Keys.ENTER)
    wait(browser, lambda b: search_title(b).startswith(f"Results for '{SEARCH_TEXT}'"), "the search's results")
    top = int(browser.find_element(By.ID, "search-results").get_attribute("data-top"))
    api_hits = service.api("GET", f"/api/jobs/{steered_job}/search",
                           params={"q": SEARCH_TEXT, "top": top}).json()["hits"]
    n = min(top, kept)
    assert len(api_hits) == n
    assert search_title(browser) == f"Results for '{SEARCH_TEXT}' ({n}) · Clear"
    files = hit_files(browser)
    assert len(files) == n and files[0] == api_hits[0]["file"]
    assert sorted(files) == sorted(h["file"] for h in api_hits)
    wait(browser, lambda b: hits_loaded(b, n), f"{n} result pictures")
    first = browser.find_element(By.CSS_SELECTOR, "#search-results .thumb")
    score = float(first.find_element(By.CSS_SELECTOR, ".hit-score").text)
    assert score == pytest.approx(api_hits[0]["score"], abs=0.002)
    assert not first.find_elements(By.CSS_SELECTOR, ".thumb-tags")  # one class, no split: no tags
    assert shown_images(browser) == [] and not browser.find_element(By.ID, "images-count").is_displayed()
    assert browser.find_element(By.ID, "search-form").get_attribute("aria-busy") == "false"
    assert search_message(browser) == ""
    shot(browser, "17-steered-search", full_page=True)

    # A redraw of the whole page (what saving a token does) keeps the results.
    seen = polls(browser)
    js(browser, "document.getElementById('forget-token').click()")
    wait(browser, lambda b: polls(b) > seen, "a redraw of the page", 30)
    assert hit_files(browser) == files and search_title(browser) == f"Results for '{SEARCH_TEXT}' ({n}) · Clear"
    assert shown_images(browser) == []

    # The viewer steps through the hits in rank order.
    first.click()
    wait(browser, lambda b: js(b, "return document.getElementById('viewer').open"), "the viewer")
    assert browser.find_element(By.ID, "viewer-title").text == f"{files[0]} (1 of {n})"
    browser.find_element(By.ID, "viewer").send_keys(Keys.ARROW_RIGHT)
    wait(browser, lambda b: b.find_element(By.ID, "viewer-title").text == f"{files[1]} (2 of {n})", "the second hit")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait(browser, lambda b: not js(b, "return document.getElementById('viewer').open"), "the viewer to close", 5)

    assert_fits_a_phone(browser)

    # "Clear" brings the grid back as it was; an empty search asks for text without asking the API.
    browser.find_element(By.ID, "search-clear").click()
    wait(browser, lambda b: len(shown_images(b)) == kept, "the grid again")
    assert search_title(browser) == "" and hit_files(browser) == []
    assert browser.find_element(By.ID, "images-count").text == f"{kept} images"
    box.clear()
    box.send_keys("   ", Keys.ENTER)
    wait(browser, lambda b: "Type what to look for" in search_message(b), "the empty search's message", 5)
    assert search_title(browser) == "" and len(shown_images(browser)) == kept


def test_a_steered_job_is_searched_by_picture(browser: WebDriver, service: Service, steered_job: str,
                                             tmp_path: Path) -> None:
    job = service.wait_status(steered_job, {"done", "failed", "cancelled"})
    assert job["status"] == "done", job["error"]
    open_page(browser, f"{service.url}/jobs/{steered_job}")
    wait(browser, lambda b: b.find_element(By.ID, "search-form").is_displayed(), "the search panel")
    images = service.api("GET", f"/api/jobs/{steered_job}/images").json()["images"]
    pick = images[-1]
    picture = tmp_path / pick["file"]
    picture.write_bytes(service.api("GET", pick["url"]).content)
    upload = browser.find_element(By.ID, "search-picture")
    upload.send_keys(str(picture))
    wait(browser, lambda b: search_title(b).startswith(f"Results for the picture '{picture.name}'"), "the results")
    n = min(int(browser.find_element(By.ID, "search-results").get_attribute("data-top")), job["count"])
    assert search_title(browser) == f"Results for the picture '{picture.name}' ({n}) · Clear"
    assert hit_files(browser)[0] == pick["file"]
    wait(browser, lambda b: hits_loaded(b, n), f"{n} result pictures")
    js(browser, "document.getElementById('images').scrollIntoView()")
    shot(browser, "18-search-by-picture")

    # Over 5 MiB: refused in the page, the results stay.
    big = tmp_path / "big.jpg"
    big.write_bytes(picture.read_bytes() + b"\0" * (5 * 1024 * 1024))
    upload.send_keys(str(big))
    wait(browser, lambda b: "at most 5 MiB" in search_message(b), "the size message", 5)
    assert "big.jpg" in search_message(browser) and hit_files(browser)[0] == pick["file"]

    # A file that is no picture: the API's own sentence.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture at all")
    answer = service.api("POST", f"/api/jobs/{steered_job}/search", data=broken.read_bytes(),
                         headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == 409
    upload.send_keys(str(broken))
    # (the API's sentence names a Python object by its address, which differs from one call to the next)
    same = lambda text: re.sub(r"0x[0-9a-f]+", "0x…", text)  # noqa: E731
    wait(browser, lambda b: search_message(b) and same(search_message(b)) == same(answer.json()["detail"]),
         "the API's error", 60)
    assert search_message(browser).startswith("the uploaded picture cannot be used: decode_error")
    assert "error" in browser.find_element(By.ID, "search-message").get_attribute("class")
    assert hit_files(browser)[0] == pick["file"]  # the last results stay
    js(browser, "document.getElementById('images').scrollIntoView()")
    shot(browser, "19-search-error")


def test_the_form_sends_example_pictures_and_negative_prompts(browser: WebDriver, service: Service,
                                                              scenario: Any) -> None:
    from test_steer_e2e import targets

    like = targets(scenario, 2)
    output = "dash-form-steered"

    def created() -> bool:
        return any(j["output"] == output for j in service.api("GET", "/api/jobs?per_page=100").json()["jobs"])

    open_page(browser, service.url)
    fill(browser, {"query": QUERY, "limit": "5", "output": output, "source": "naver",
                   "like": f"{like[0]}\n\nwww.example.com/a.jpg\n", "exclude": "drawing"})
    browser.find_element(By.ID, "start").click()
    wait(browser, lambda b: b.find_element(By.ID, "err-like").text, "the example pictures' message", 5)
    assert "Line 3" in browser.find_element(By.ID, "err-like").text
    assert "www.example.com/a.jpg" in browser.find_element(By.ID, "err-like").text
    assert browser.find_element(By.ID, "f-like").get_attribute("aria-invalid") == "true"
    assert not browser.find_elements(By.CSS_SELECTOR, "#form-message a") and not created()
    shot(browser, "20-form-steering-error")

    fill(browser, {"like": "\n".join(f"{like[0]}?n={i}" for i in range(9))})
    browser.find_element(By.ID, "start").click()
    wait(browser, lambda b: "At most 8" in b.find_element(By.ID, "err-like").text, "the too-many message", 5)
    assert not created()

    # What only the server checks comes back under its field too: a negative prompt over 200 characters.
    long_prompt = "x" * 201
    body = {"query": QUERY, "limit": 5, "output": output, "like": like, "exclude": [long_prompt]}
    expected = [d["message"] for d in service.api("POST", "/api/jobs", json=body).json()["detail"]
                if d["field"].split(".")[0] == "exclude"]
    assert expected and not created()
    fill(browser, {"like": f"  {like[0]}\n\n{like[1]}  \n", "exclude": long_prompt})
    browser.find_element(By.ID, "start").click()
    wait(browser, lambda b: b.find_element(By.ID, "err-exclude").text, "the server's message", 10)
    assert browser.find_element(By.ID, "err-exclude").text == " ".join(expected)
    assert browser.find_element(By.ID, "err-like").text == ""
    assert browser.find_element(By.ID, "f-exclude").get_attribute("aria-invalid") == "true"
    assert not created()

    fill(browser, {"exclude": "  drawing \n\nlogo\n"})
    browser.find_element(By.ID, "start").click()
    link = wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "#form-message a")), "the job's link")
    job_id = link.get_attribute("href").rstrip("/").split("/")[-1]
    try:
        assert browser.find_element(By.ID, "err-exclude").text == ""
        dataset = service.job(job_id)["options"]["dataset"]
        assert dataset["like"] == like and dataset["exclude"] == ["drawing", "logo"]
        assert dataset["queries"] == [QUERY] and dataset["split"] is None and dataset["balance"] is False
    finally:  # the fields were the point; the workers have other jobs to run
        service.api("POST", f"/api/jobs/{job_id}/cancel")
        job = service.wait_status(job_id, {"done", "failed", "cancelled"}, timeout_s=60)
    # Its page shows what it was given; a job that is not done has nothing to search.
    open_page(browser, f"{service.url}/jobs/{job_id}")
    links = browser.find_elements(By.CSS_SELECTOR, "#job-facts .example-links a")
    assert [a.get_attribute("href") for a in links] == like
    if job["status"] != "done":
        assert not browser.find_element(By.ID, "search-form").is_displayed()


def test_search_hits_of_a_job_of_several_classes_name_their_class_and_split(browser: WebDriver,
                                                                           service: Service) -> None:
    from test_classes_e2e import CLASSES

    jobs = service.api("GET", "/api/jobs?per_page=100").json()["jobs"]
    job = next(j for j in jobs if j["output"] == "dash-classes")  # from the class cards' test
    assert job["status"] == "done", job["error"]
    open_page(browser, f"{service.url}/jobs/{job['id']}")
    wait(browser, lambda b: b.find_element(By.ID, "search-form").is_displayed(), "the search panel")
    browser.find_element(By.ID, "search-text").send_keys(CLASSES[0])
    browser.find_element(By.ID, "search-submit").click()
    wait(browser, lambda b: search_title(b).startswith(f"Results for '{CLASSES[0]}'"), "the search's results")
    top = int(browser.find_element(By.ID, "search-results").get_attribute("data-top"))
    hits = service.api("GET", f"/api/jobs/{job['id']}/search", params={"q": CLASSES[0], "top": top}).json()["hits"]
    assert len(hits) == min(top, job["count"]) and hit_files(browser)[0] == hits[0]["file"]
    by_file = {h["file"]: [h["label"], h["split"]] for h in hits}
    tags = js(browser, "return [...document.querySelectorAll('#search-results .thumb')]"
                       ".map(t => [t.dataset.file, [...t.querySelectorAll('.tag')].map(s => s.textContent)])")
    assert {file: shown for file, shown in tags} == by_file
    shot(browser, "21-classes-search", full_page=True)


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

