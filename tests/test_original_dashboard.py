"""The original tool's dashboard against this API, in a real headless Chromium.

The service serves `tests/original_page/` through CVDB_ORIGINAL_DASHBOARD_DIR, as a user serves the
original's own `dashboard/static`: a stand-in page that makes the original page's calls in the same
order and reads only the fields it reads (POST /api/run with `out_dir` = data/naver_collected, then
`job_id`, polling until `status` is not `running`, `files` of /images, `log` of the job).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from service_harness import Service

pytestmark = pytest.mark.slow

from browser_harness import chromium, js, wait  # noqa: E402  (skips the module without Chromium)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

QUERY = "해바라기"  # the corpus target: reaches done in seconds


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium((1280, 900)) as driver:
        yield driver


def open_original(browser: WebDriver, service: Service) -> None:
    browser.get(f"{service.url}/static/index.html")
    wait(browser, lambda b: js(b, "return document.getElementById('jobList').innerHTML !== ''"), "the job list")
    js(browser, "window.confirm = () => true;")  # the page asks before deleting or clearing


def run_from_the_form(browser: WebDriver, query: str, limit: int, out_dir: str | None = None) -> str:
    """Fill the form as a user does (the default out_dir unless given), press run, wait for the end."""
    for name, value in (("query", query), ("limit", str(limit))) + ((("out_dir", out_dir),) if out_dir else ()):
        field = browser.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)
    browser.find_element(By.ID, "btnRun").click()
    wait(browser, lambda b: js(b, "return document.getElementById('runResult').dataset.status"), "the run to end", 180)
    return str(js(browser, "return document.getElementById('runResult').dataset.status"))


@pytest.fixture(scope="module")
def original_run(browser: WebDriver, service: Service) -> dict[str, Any]:
    """One job run from the original's form with its default output folder, data/naver_collected."""
    open_original(browser, service)
    status = run_from_the_form(browser, QUERY, 12)
    seen = js(browser, "return window.seen")
    run_calls = [c for c in seen["calls"] if c.startswith("POST /api/run")]
    assert status == "done" and len(run_calls) == 1, (status, seen)
    job_id = next(c.split("/")[-1] for c in seen["calls"] if c.startswith("GET /api/jobs/") and "?" not in c)
    return {"job": service.job(job_id), "seen": seen}


def test_a_run_from_the_original_form_polls_its_job_to_done(browser: WebDriver, service: Service,
                                                            original_run: dict[str, Any]) -> None:
    job, seen = original_run["job"], original_run["seen"]
    assert job["status"] == "done" and job["count"] > 0
    # data/naver_collected -> a folder of the job's own inside the data folder, as the original made one per run.
    assert job["out_dir"] == job["output"] == f"naver_collected-{job['id'][:8]}"
    assert (service.data_root / job["out_dir"] / "manifest.jsonl").is_file()
    # The page read `job_id` (no /api/jobs/undefined) and saw `running` until `done`, never `queued`.
    assert not any("undefined" in call for call in seen["calls"])
    assert seen["polled"][-1] == "done" and set(seen["polled"][:-1]) <= {"running"}
    assert browser.find_element(By.ID, "runResult").text == f"done: {job['out_dir']}, {job['count']}"
    # The history table: the original's columns from GET /api/jobs?page=&per_page=.
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, f"tr[data-job-id='{job['id']}']"), "the job's row")
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, f"tr[data-job-id='{job['id']}'] td")][:5]
    assert cells == [job["id"], QUERY, "12", job["out_dir"], "done"]
    assert int(js(browser, "return document.getElementById('jobList').dataset.total")) >= 1


def test_its_images_and_log_open_from_the_history(browser: WebDriver, service: Service,
                                                  original_run: dict[str, Any]) -> None:
    job = original_run["job"]
    browser.find_element(By.CSS_SELECTOR, f"tr[data-job-id='{job['id']}'] .btn-images").click()
    loaded = ("const imgs = [...document.querySelectorAll('#modalGrid img')];"
              "return imgs.length === arguments[0] && imgs.every(i => i.complete && i.naturalWidth > 0);")
    wait(browser, lambda b: js(b, loaded, job["count"]), f"{job['count']} images to load")
    names = js(browser, "return [...document.querySelectorAll('#modalGrid img')].map(i => i.src.split('/').pop())")
    assert names == [f"img_{i:04d}.jpg" for i in range(1, job["count"] + 1)]

    browser.find_element(By.CSS_SELECTOR, f"tr[data-job-id='{job['id']}'] .btn-log").click()
    wait(browser, lambda b: "queued:" in b.find_element(By.ID, "content").text, "the job's log")
    assert browser.find_element(By.ID, "title").text == f"log: {QUERY} ({job['id']})"
    assert "done: saved" in browser.find_element(By.ID, "content").text


def test_a_refused_out_dir_shows_a_readable_sentence(browser: WebDriver, service: Service) -> None:
    open_original(browser, service)
    assert run_from_the_form(browser, QUERY, 5, out_dir="../../etc") == "refused"
    message = browser.find_element(By.ID, "runResult").text
    assert "[object Object]" not in message and "out_dir" in message and "'..'" in message


def test_delete_keeps_the_images_as_the_original_promises_then_clear(browser: WebDriver, service: Service,
                                                                      original_run: dict[str, Any]) -> None:
    job = original_run["job"]
    open_original(browser, service)
    browser.find_element(By.CSS_SELECTOR, f"tr[data-job-id='{job['id']}'] .btn-delete").click()
    wait(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, f"tr[data-job-id='{job['id']}']"), "the row to go")
    assert service.api("GET", f"/api/jobs/{job['id']}").status_code == 404
    folder = service.data_root / job["out_dir"]
    assert len(list(folder.glob("img_*.jpg"))) == job["count"] and (folder / "manifest.jsonl").is_file()

    browser.find_element(By.ID, "btnClearHistory").click()
    wait(browser, lambda b: js(b, "return Number(document.getElementById('jobList').dataset.total)")
         == service.api("GET", "/api/jobs").json()["total"], "the cleared history")
    assert all(not j["final"] for j in service.api("GET", "/api/jobs").json()["jobs"])
    assert js(browser, "return window.seen.errors") == []
