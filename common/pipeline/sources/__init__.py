"""Image sources and the one entry point that picks among them.

`search(query, limit, settings, source=...)` runs one named source, or with `source="auto"` tries
`settings.source_order` in turn (skipping `naver-api` without credentials) until one finds
images. Every source tried is recorded in `SearchResult.attempts`, for the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from common.pipeline.records import Candidate
from common.pipeline.sources.base import Source, SourceError
from common.pipeline.sources.naver import NaverSource
from common.pipeline.sources.naver_api import (
    CREDENTIAL_VARS,
    NaverApiSource,
    has_credentials,
)
from common.pipeline.sources.urls import UrlsSource

if TYPE_CHECKING:
    from common.config import Settings

__all__ = ["SOURCES", "SearchResult", "Source", "SourceError", "make_source", "search", "search_classes"]

# name -> factory(settings, urls_file). Sources are cheap to build: nothing starts until search().
SOURCES: dict[str, Callable[[Settings, str | None], Source]] = {
    "naver": lambda settings, _urls: NaverSource(settings),
    "naver-api": lambda settings, _urls: NaverApiSource(settings),
    "naver-browser": lambda settings, _urls: _browser_source(settings),
    "urls": lambda _settings, urls_file: _urls_source(urls_file),
}
AUTO = "auto"


def _urls_source(urls_file: str | None) -> Source:
    if urls_file is None:  # never fall back to stdin silently: the run would seem to hang
        needs = "the urls source needs a list: pass --urls FILE (or --urls - for stdin)"
        raise SourceError("urls", needs, kind="input")
    return UrlsSource(urls_file)


def _browser_source(settings: Settings) -> Source:
    # Imported on use: undetected-chromedriver and selenium are slow to import and most runs skip them.
    from common.pipeline.sources.naver_browser import NaverBrowserSource

    return NaverBrowserSource(settings)


@dataclass
class SearchResult:
    candidates: list[Candidate]
    served_by: str
    attempts: list[dict[str, Any]] = field(default_factory=list)


def make_source(name: str, settings: Settings, urls_file: str | None = None) -> Source:
    factory = SOURCES.get(name)
    if factory is None:
        choices = ", ".join([*SOURCES, AUTO])
        raise SourceError(name, f"unknown source {name!r}; choose one of {choices}", kind="input")
    return factory(settings, urls_file)


def search(
    query: str,
    limit: int,
    settings: Settings,
    source: str | None = None,
    urls_file: str | None = None,
) -> SearchResult:
    """Candidates for `query` from `source` (default `settings.source`).

    A `urls_file` always means the `urls` source: the user handed over the images to use.
    A single named source that fails raises its SourceError; `auto` raises only when every
    source in `settings.source_order` failed, was skipped, or found nothing.
    """
    name = "urls" if urls_file is not None else (source or settings.source)
    if name != AUTO:
        attempt, candidates = _attempt(make_source(name, settings, urls_file), query, limit)
        return SearchResult(candidates, name, [attempt])
    attempts: list[dict[str, Any]] = []
    for name in settings.source_order:
        skip = _skip_reason(name, settings)
        if skip is not None:
            attempts.append({"source": name, "outcome": "skipped", "count": 0, "error": skip})
            continue
        try:
            attempt, candidates = _attempt(make_source(name, settings), query, limit)
        except SourceError as exc:
            attempts.append(_failure(name, exc))
            continue
        attempts.append(attempt)
        return SearchResult(candidates, name, attempts)
    all_empty = all(a["outcome"] in ("empty", "skipped") for a in attempts)
    summary = "; ".join(_summary(a) for a in attempts)
    raise SourceError(AUTO, f"no source found images: {summary}", kind="empty" if all_empty else "failed")


def search_classes(
    labels: Sequence[str],
    limit: int,
    settings: Settings,
    source: str | None = None,
    urls_file: str | None = None,
    listed: UrlsSource | None = None,
) -> dict[str, SearchResult]:
    """One search per class. A URL list (`urls_file` or an open `listed`) is read once and split
    by its lines' labels; a list without labels gives every class all of its URLs."""
    if listed is None and urls_file is not None:
        listed = UrlsSource(urls_file)
    found: dict[str, SearchResult] = {}
    for label in labels:
        if listed is None:
            found[label] = search(label, limit, settings, source=source)
        else:
            attempt, candidates = _attempt(listed, label, limit)
            found[label] = SearchResult(candidates, listed.name, [attempt])
    return found


def _skip_reason(name: str, settings: Settings) -> str | None:
    if name == "naver-api" and not has_credentials(settings):
        return f"no credentials (set {CREDENTIAL_VARS})"
    if name == "urls":
        return "needs a file of URLs (--urls)"
    return None


def _attempt(source: Source, query: str, limit: int) -> tuple[dict[str, Any], list[Candidate]]:
    """Run one source; an empty list counts as a failure so `auto` moves on."""
    started = time.monotonic()
    candidates = source.search(query, limit)
    if not candidates:
        raise SourceError(source.name, f"no images found for {query!r}", kind="empty")
    elapsed = round(time.monotonic() - started, 3)
    attempt = {"source": source.name, "outcome": "ok", "count": len(candidates), "error": None, "elapsed_s": elapsed}
    return attempt, candidates


def _failure(name: str, exc: SourceError) -> dict[str, Any]:
    outcome = "empty" if exc.kind == "empty" else "failed"
    return {"source": name, "outcome": outcome, "count": 0, "error": exc.message, "kind": exc.kind}


def _summary(attempt: dict[str, Any]) -> str:
    return f"{attempt['source']} {attempt['outcome']}: {attempt['error']}"
