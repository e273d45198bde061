"""The `urls` source: image URLs the user already has, one per line, from a file or stdin ("-").

Blank lines and lines starting with `#` are ignored, whitespace is stripped, exact repeats are
dropped. Every other line must be an http(s) URL: a typo is reported with its line number
rather than silently skipped. The query is not used.
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
    urls: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not is_http_url(line):
            raise SourceError(
                NAME,
                f"line {number} of {origin} is not an http(s) URL: {line[:80]!r}; fix it or comment it out with #",
                kind="input",
            )
        urls.append(line)
    return urls


class UrlsSource:
    """Candidates read from a list of URLs instead of a search engine."""

    name = NAME

    def __init__(self, path: str, stdin: TextIO | None = None) -> None:
        self.path = path
        self.stdin = stdin  # injectable for tests; sys.stdin when None

    def search(self, query: str, limit: int) -> list[Candidate]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        origin = "standard input" if self.path == "-" else self.path
        urls = parse_lines(self._lines(), origin)
        if not urls:
            raise SourceError(NAME, f"{origin} contains no URLs (only blank lines or # comments)", kind="empty")
        return finalize((Candidate(url=url, source=NAME) for url in urls), limit)

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
