"""The `urls` source: image URLs the user already has, one per line, from a file or stdin ("-").

Blank lines and lines starting with `#` are ignored, whitespace is stripped, exact repeats are
dropped. Every other line must be an http(s) URL: a typo is reported with its line number
rather than silently skipped. A line may carry its class: `label<TAB>URL`; in such a list every
line does, and a search for a query returns the lines labelled with it (one class of a multi-class
dataset). In a list without labels the query is not used.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from common.pipeline.records import Candidate
from common.pipeline.sources.base import SourceError, finalize, is_http_url

NAME = "urls"


def parse_lines(lines: Iterable[str], origin: str) -> list[str]:
    """URLs in file order; SourceError naming the first line that is not an http(s) URL."""
    return [url for _, url in parse_entries(lines, origin)]


def parse_entries(lines: Iterable[str], origin: str) -> list[tuple[str | None, str]]:
    """(label or None, URL) in file order; SourceError naming the first line that is not an
    http(s) URL, or that lacks the label the other lines have."""
    entries: list[tuple[str | None, str]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        label, url = (part.strip() for part in line.split("\t", 1)) if "\t" in line else (None, line)
        if not is_http_url(url) or label == "":
            raise SourceError(
                NAME,
                f"line {number} of {origin} is not an http(s) URL or label<TAB>URL: {line[:80]!r}; "
                "fix it or comment it out with #",
                kind="input",
            )
        if entries and (entries[0][0] is None) != (label is None):
            raise SourceError(NAME, f"line {number} of {origin} {'has' if label else 'lacks'} a label and line "
                              "1 does not; give every line as label<TAB>URL, or none", kind="input")
        entries.append((label, url))
    return entries


def labels_in(entries: Iterable[tuple[str | None, str]]) -> list[str]:
    """The classes a labelled list names, in the order they first appear ([] without labels)."""
    return list(dict.fromkeys(label for label, _ in entries if label is not None))


class UrlsSource:
    """Candidates read from a list of URLs instead of a search engine."""

    name = NAME

    def __init__(self, path: str, stdin: TextIO | None = None) -> None:
        self.path = path
        self.stdin = stdin  # injectable for tests; sys.stdin when None
        self._entries: list[tuple[str | None, str]] | None = None

    def search(self, query: str, limit: int) -> list[Candidate]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        entries = self.entries()
        if not entries:
            raise SourceError(NAME, f"{self.origin} contains no URLs (only blank lines or # comments)", kind="empty")
        labels = labels_in(entries)
        if labels and query not in labels:
            raise SourceError(NAME, f"no line of {self.origin} is labelled {query!r}; its labels are "
                              f"{', '.join(map(repr, labels[:10]))}", kind="input")
        urls = [url for label, url in entries if label is None or label == query]
        return finalize((Candidate(url=url, source=NAME) for url in urls), limit)

    @property
    def origin(self) -> str:
        return "standard input" if self.path == "-" else self.path

    def entries(self) -> list[tuple[str | None, str]]:
        """The list's (label, URL) lines, read once (standard input cannot be read twice)."""
        if self._entries is None:
            self._entries = parse_entries(self._lines(), self.origin)
        return self._entries

    def _lines(self) -> list[str]:
        if self.path == "-":
            return (self.stdin or sys.stdin).read().splitlines()
        path = Path(self.path).expanduser()
        try:
            return path.read_text(encoding="utf-8-sig").splitlines()
        except FileNotFoundError:
            raise SourceError(NAME, f"the URL list {self.path} does not exist", kind="input") from None
        except IsADirectoryError:
            raise SourceError(NAME, f"{self.path} is a folder, not a file of URLs", kind="input") from None
        except UnicodeDecodeError:
            message = f"{self.path} is not UTF-8 text; save it as a plain text file"
            raise SourceError(NAME, message, kind="input") from None
        except OSError as exc:
            raise SourceError(NAME, f"cannot read {self.path}: {exc.strerror}", kind="input") from None
