"""The `naver-browser` source in real headless Chromium (Debian's) against the offline fake Naver.

Besides the results, every test checks that no chromium, chromedriver or crash-handler process
it started is left behind (not even as a zombie), and no temp dir either. Processes are told
apart from other people's browsers on the same machine by parent, session and temp dir.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.config import Settings
from common.devkit.fake_naver import FakeNaver
from common.pipeline.sources.base import SourceError
from common.pipeline.sources.naver_browser import BrowserSession, NaverBrowserSource

CHROMIUM = Settings().chromium_path
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install -y chromium chromium-driver)"
)
QUERY = "고양이"
# /proc/<pid>/comm holds the first 15 characters of the program name.
BROWSER_NAMES = ("chromium", "chromedriver", "chrome_crashpad")


@dataclass(frozen=True)
class Proc:
    pid: int
    name: str
    state: str
    ppid: int
    sid: int
    cmdline: str


def browser_processes() -> list[Proc]:
    """Every chromium-related process, zombies included, read from /proc (no psutil)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if name.startswith(BROWSER_NAMES):
            found.append(Proc(int(entry), name, fields[0], int(fields[1]), int(fields[3]), cmdline))
    return found


@pytest.fixture
def no_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if a browser process or temp dir it started outlives it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the session's work dir goes here
    sessions: list[int] = []  # the browser calls setsid: its pid names its session
    read_pid = BrowserSession._browser_pid

    def recording(self: BrowserSession) -> int | None:
        pid = read_pid(self)
        if pid:
            sessions.append(pid)
        return pid

    monkeypatch.setattr(BrowserSession, "_browser_pid", recording)
    yield
    assert sessions, "no browser was started"
    ours = [
        p for p in browser_processes()
        if p.ppid == os.getpid() or p.sid in sessions or str(tmp_path) in p.cmdline
    ]
    assert not ours, f"left behind: {ours}"
    assert not list(tmp_path.glob("cvdb-uc-*"))


def browser_search(fake: FakeNaver, limit: int = 1000) -> list[Any]:
    settings = Settings(**fake.settings_overrides())
    return NaverBrowserSource(settings).search(QUERY, limit)


@pytest.mark.usefixtures("no_leftovers")
def test_browser_scrolls_and_returns_exactly_the_images() -> None:
    with FakeNaver() as fake:
        found = browser_search(fake)
        assert [c.url for c in found] == fake.expected_urls()
        assert [c.rank for c in found] == list(range(1, len(found) + 1))
        assert {c.source for c in found} == {"naver-browser"}
        first = fake.image_items()[0]
        assert found[0].title == "귀여운 고양이 사진 1"  # from the page's data object, <mark> stripped
        assert (found[0].width, found[0].source_page) == (first.width, first.link)
        # The later results only exist after the page's own scroll handler fetched them.
        assert any(hit.path == "/p/c/image/46/search.naver" for hit in fake.hits)


@pytest.mark.usefixtures("no_leftovers")
def test_browser_reads_the_dom_when_the_page_has_no_data_object() -> None:
    with FakeNaver(mode="changed") as fake:
        found = browser_search(fake)
        # Originals decoded from the thumbnails' src=, the EUC-KR one included, exactly once.
        assert [c.url for c in found] == fake.expected_urls()
        assert all(c.width for c in found)


@pytest.mark.usefixtures("no_leftovers")
def test_browser_stops_scrolling_at_the_limit() -> None:
    with FakeNaver() as fake:
        found = browser_search(fake, limit=20)
        assert [c.url for c in found] == fake.expected_urls()[:20]
        assert not any("/p/c/image/" in hit.path for hit in fake.hits)


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize(("mode", "kind"), [("blocked", "blocked"), ("empty", "empty"), ("adult", "adult")])
def test_browser_reports_pages_without_results(mode: str, kind: str) -> None:
    with FakeNaver(mode=mode) as fake:
        with pytest.raises(SourceError) as error:
            browser_search(fake)
    assert (error.value.source, error.value.kind) == ("naver-browser", kind)


@pytest.mark.usefixtures("no_leftovers")
def test_browser_is_reaped_on_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: NaverBrowserSource, driver: Any, limit: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(NaverBrowserSource, "_scroll", interrupted)
    with FakeNaver() as fake:
        with pytest.raises(KeyboardInterrupt):
            browser_search(fake)
