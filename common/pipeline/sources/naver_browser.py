"""The `naver-browser` source: Naver image search in headless Chromium, driven by undetected-chromedriver.

The fallback for when plain HTTP is blocked or the page data moved: a real browser loads the
results page, scrolls until no more tiles load, then reads the page's own data object through
JS when it is there, and the DOM tiles (thumbnail `src=` decoded to the original) when not.

Debian's chromium and chromedriver are used as installed: uc patches the driver binary in place,
so it gets a writable copy in a private temp dir, and it cannot download a driver offline.
Every process this starts is reaped, also on errors and Ctrl-C: the browser runs in its own
session (so its whole process group can be killed), anything still mentioning the private
temp dir is killed, and the dir is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from common.pipeline.records import Candidate
from common.pipeline.sources.base import SourceError, candidate_from_item, empty_result, finalize, require_query
from common.pipeline.sources.naver import page_problem

if TYPE_CHECKING:
    from common.config import Settings

NAME = "naver-browser"
FLAGS = (
    "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",  # containers give /dev/shm 64 MiB; Chromium crashes when it fills
    "--lang=ko-KR",
)
MAX_SCROLLS = 200
INSTALL_HINT = "install them with `apt-get install -y chromium chromium-driver`"

# Reads the page: its data object if present, and every thumbnail tile in DOM order.
READ_PAGE_JS = """
var out = {data: null, tiles: []};
try {
  var d = window.imageSearchTabData;
  if (d && d.content && Array.isArray(d.content.items)) { out.data = JSON.parse(JSON.stringify(d.content.items)); }
} catch (e) {}
var imgs = document.querySelectorAll('img._fe_image_tab_content_thumbnail_image, img._image._listImage');
for (var i = 0; i < imgs.length; i++) {
  var img = imgs[i], tile = img.closest('[data-type]'), link = img.closest('a'), holder = img.closest('[data-id]');
  out.tiles.push({
    id: img.getAttribute('data-image-viewer-img-id') || (holder ? holder.getAttribute('data-id') : ''),
    src: img.getAttribute('data-src') || img.getAttribute('src') || '',
    alt: img.getAttribute('alt') || '',
    type: tile ? tile.getAttribute('data-type') : null,
    w: img.getAttribute('data-org-width'), h: img.getAttribute('data-org-height'),
    link: link ? link.href : null
  });
}
return out;
"""
COUNT_TILES_JS = (
    "return document.querySelectorAll('img._fe_image_tab_content_thumbnail_image, img._image._listImage').length;"
)
SCROLL_JS = "window.scrollTo(0, document.documentElement.scrollHeight);"
# Chromium's own error page (connection refused, DNS, ...): not a Naver page at all.
NET_ERROR_JS = "return location.href.indexOf('chrome-error:') === 0 || !!document.getElementById('main-frame-error');"


# --- Processes ------------------------------------------------------------------------------------

def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; True if it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass(frozen=True)
class ProcStat:
    state: str  # "Z" for a zombie: exited, waiting for its parent to collect it
    ppid: int
    pgrp: int


def proc_stat(pid: int) -> ProcStat | None:
    """State, parent and process group of `pid`; None when it no longer exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may contain spaces and brackets
    return ProcStat(fields[0], int(fields[1]), int(fields[2]))


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def group_members(pgid: int) -> set[int]:
    """Processes (zombies too) in process group `pgid`."""
    return {pid for pid in _pids() if (stat := proc_stat(pid)) is not None and stat.pgrp == pgid}


def processes_using(path: str) -> set[int]:
    """Live processes whose executable or command line mentions `path` (our private temp dir)."""
    found = set()
    for pid in _pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            exe = "" if path in cmdline else os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if path in cmdline or path in exe:
            found.add(pid)
    return found


def _gone(pid: int) -> bool:
    """Exited and collected, or a zombie only its own (other) parent can collect."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # collects it when it is our child (or adopted orphan)
    stat = proc_stat(pid)
    return stat is None or (stat.state == "Z" and stat.ppid != os.getpid())


def _signal(pid: int, sig: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, sig)


# Chromium's helpers outlive the browser for a moment and would become zombies of PID 1 (which
# in a container may never collect them). As a "child subreaper" this process adopts them and
# collects them itself. Process-wide, so counted across concurrent sessions.
_PR_SET_CHILD_SUBREAPER = 36
_adopters = 0
_adopters_lock = threading.Lock()


def _set_subreaper(on: bool) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def adopt_orphans(on: bool) -> None:
    """Hold (True) or release (False) subreaper status; the first holder turns it on, the last off."""
    global _adopters
    with _adopters_lock:
        _adopters += 1 if on else -1
        if _adopters == (1 if on else 0):
            _set_subreaper(on)


# --- Browser ----------------------------------------------------------------------------------------

def chromium_major(path: str, what: str = "chromium") -> int:
    """The major version from `<path> --version` ("Chromium 156.0.8078.79 built on Debian ...")."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(NAME, f"cannot run {what} at {path} ({exc}); {INSTALL_HINT}", kind="browser") from exc
    match = re.search(r"(\d+)\.\d+\.\d+", done.stdout)
    if match is None:
        raise SourceError(NAME, f"`{path} --version` printed no version ({done.stdout.strip()[:80]!r})", kind="browser")
    return int(match.group(1))


class BrowserSession:
    """A headless Chromium under uc that leaves nothing behind: use as a context manager."""

    def __init__(self, settings: Settings, page_timeout_s: float) -> None:
        self.settings = settings
        self.page_timeout_s = page_timeout_s
        self.work = ""
        self.driver: Any = None

    def __enter__(self) -> Any:
        self._check_installed()
        self.work = tempfile.mkdtemp(prefix="cvdb-uc-")
        adopt_orphans(True)
        try:
            self.driver = self._start()
        except BaseException as exc:  # also KeyboardInterrupt: never leave a browser running
            self.close()
            if isinstance(exc, Exception) and not isinstance(exc, SourceError):
                raise SourceError(NAME, f"Chromium did not start: {_short(exc)}", kind="browser") from exc
            raise
        return self.driver

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_installed(self) -> None:
        needed = {
            "CVDB_CHROMIUM_PATH": self.settings.chromium_path,
            "CVDB_CHROMEDRIVER_PATH": self.settings.chromedriver_path,
        }
        for variable, path in needed.items():
            if not os.access(path, os.X_OK):
                raise SourceError(NAME, f"{path} is missing; {INSTALL_HINT}, or set {variable}", kind="browser")

    def _start(self) -> Any:
        import undetected_chromedriver as uc  # heavy; only the browser source needs it

        version = chromium_major(self.settings.chromium_path)
        driver_path = os.path.join(self.work, "chromedriver")
        shutil.copy2(self.settings.chromedriver_path, driver_path)  # uc rewrites the binary in place
        os.chmod(driver_path, 0o755)
        driver_version = chromium_major(driver_path, "chromedriver")
        if driver_version != version:
            mismatch = f"chromium is version {version} but chromedriver is {driver_version}"
            raise SourceError(NAME, f"{mismatch}; {INSTALL_HINT}", kind="browser")
        options = uc.ChromeOptions()
        for flag in FLAGS:
            options.add_argument(flag)
        driver = uc.Chrome(
            options=options, browser_executable_path=self._launcher(), driver_executable_path=driver_path,
            user_data_dir=os.path.join(self.work, "profile"), version_main=version, headless=True,
            use_subprocess=True, no_sandbox=True,
        )
        driver.set_page_load_timeout(self.page_timeout_s)
        driver.set_script_timeout(self.page_timeout_s)
        return driver

    def _launcher(self) -> str:
        """A wrapper that records the browser pid and starts it in a new session.

        uc starts the browser in our own process group, where killing the group would kill us
        too; in its own session, the browser and all its helpers can be killed as one group.
        HOME and XDG dirs point into the temp dir so the crash reporter and caches stay there.
        """
        work = shlex.quote(self.work)
        setsid = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"
        script = (
            "#!/bin/sh\n"
            f"echo $$ > {work}/browser.pid\n"
            f"export HOME={work}/home XDG_CONFIG_HOME={work}/config XDG_CACHE_HOME={work}/cache\n"
            f"exec {shlex.quote(sys.executable)} -S -c {shlex.quote(setsid)} "
            f'{shlex.quote(self.settings.chromium_path)} "$@"\n'
        )
        path = os.path.join(self.work, "chromium-launcher")
        Path(path).write_text(script)
        os.chmod(path, 0o755)
        return path

    def close(self) -> None:
        """Quit the driver, then make sure every process we started is gone and collected."""
        if not self.work:
            return
        browser = self._browser_pid()
        # Listed before anything dies: a zombie's command line is empty, so it cannot be found later.
        ours = processes_using(self.work) | (group_members(browser) if browser else set())
        driver, self.driver = self.driver, None
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()  # kills chromedriver and sends SIGTERM to the browser
            # uc quits again when garbage-collected; by then the pid may belong to someone else.
            driver.browser_pid = None
            process = getattr(getattr(driver, "service", None), "process", None)
            if process is not None:
                with contextlib.suppress(Exception):
                    process.wait(timeout=10)  # uc never waits for chromedriver: collect it
        if browser:
            _signal(browser, signal.SIGTERM)  # graceful first: Chromium stops its own helpers
            if not wait_until(lambda: all(_gone(pid) for pid in ours | {browser}), 10):
                _signal(browser, signal.SIGKILL, group=True)
        ours |= processes_using(self.work)  # e.g. a driver whose start failed half-way
        for pid in ours:
            if not _gone(pid):
                _signal(pid, signal.SIGKILL)
        wait_until(lambda: all(_gone(pid) for pid in ours), 10)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work = ""
        adopt_orphans(False)

    def _browser_pid(self) -> int | None:
        """The browser's pid as the launcher recorded it (also its process group: it called setsid)."""
        try:
            return int(Path(self.work, "browser.pid").read_text().strip())
        except (OSError, ValueError):
            return None  # the launcher never ran


def _short(exc: BaseException) -> str:
    text = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:300]


# --- Reading the results ------------------------------------------------------------------------

def tile_item(tile: dict[str, Any]) -> dict[str, Any]:
    """A DOM tile in the shape of a data item; the original comes from the thumbnail's `src=`."""
    src = tile.get("src") or ""
    return {
        "type": tile.get("type") or "image",
        "thumb": None if src.startswith("data:") else src,
        "title": tile.get("alt"),
        "link": tile.get("link"),
        "orgWidth": tile.get("w"),
        "orgHeight": tile.get("h"),
    }


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def tile_count(driver: Any) -> int:
    return int(driver.execute_script(COUNT_TILES_JS))


def more_tiles_than(driver: Any, seen: int) -> bool:
    return tile_count(driver) > seen


def merge_page(page: dict[str, Any]) -> list[Any]:
    """Tiles in DOM order, each replaced by the page's data item with the same id when there is one."""
    data, tiles = _as_list(page.get("data")), _as_list(page.get("tiles"))
    by_id = {item["imgId"]: item for item in data if isinstance(item, dict) and item.get("imgId")}
    if not tiles:
        return list(data)
    return [by_id.get(tile.get("id")) or tile_item(tile) for tile in tiles if isinstance(tile, dict)]


class NaverBrowserSource:
    """Naver image search read from a real (headless) browser."""

    name = NAME

    def __init__(self, settings: Settings, *, settle_s: float = 5.0, page_timeout_s: float | None = None) -> None:
        self.settings = settings
        self.settle_s = settle_s  # how long to wait for more tiles after a scroll before calling it the end
        self.page_timeout_s = page_timeout_s or max(30.0, settings.total_timeout_s)

    def search(self, query: str, limit: int) -> list[Candidate]:
        from selenium.common.exceptions import WebDriverException

        query = require_query(self.name, query, limit)
        url = f"{self.settings.naver_search_url}?{urlencode({'where': 'image', 'sm': 'tab_jum', 'query': query})}"
        try:
            with BrowserSession(self.settings, self.page_timeout_s) as driver:
                driver.get(url)
                if driver.execute_script(NET_ERROR_JS):
                    raise SourceError(self.name, f"the browser could not load {url}; check the network", kind="network")
                self._scroll(driver, limit)
                items = merge_page(driver.execute_script(READ_PAGE_JS) or {})
                if not items:
                    raise self._no_tiles(driver.page_source, query)
        except WebDriverException as exc:
            raise SourceError(self.name, f"the browser failed: {_short(exc)}", kind="browser") from exc
        found = [c for c in (candidate_from_item(item, self.name) for item in items) if c]
        if not found:
            raise empty_result(self.name, query)
        return finalize(found, limit)

    def _scroll(self, driver: Any, limit: int) -> None:
        """Scroll to the bottom until enough tiles are there or none arrive within `settle_s`."""
        count = tile_count(driver)
        for _ in range(MAX_SCROLLS):
            if count == 0 or count >= limit + 10:  # a little over: ads and repeats are dropped later
                break
            driver.execute_script(SCROLL_JS)
            if not wait_until(partial(more_tiles_than, driver, count), self.settle_s, 0.2):
                break
            count = tile_count(driver)

    def _no_tiles(self, page_source: str, query: str) -> SourceError:
        problem = page_problem(page_source, 200)
        if problem == "empty":
            return empty_result(self.name, query)
        if problem == "adult":
            hidden = f"Naver hides the results for {query!r} from logged-out visitors (adult filter)"
            return SourceError(self.name, hidden, kind="adult")
        if problem == "blocked":
            return SourceError(
                self.name, "Naver showed a block or captcha page to the browser; wait a while before trying again",
                kind="blocked",
            )
        return SourceError(
            self.name, "the results page shows no image tiles; Naver changed its layout: update READ_PAGE_JS",
            kind="changed",
        )
