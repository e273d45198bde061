"""Plain records passed between stages: candidates in, downloads, decoded images, outcomes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Candidate:
    """One search result: what every source returns, whatever engine it reads."""

    url: str
    thumbnail_url: str | None = None
    source_page: str | None = None
    title: str | None = None
    width: int | None = None
    height: int | None = None
    source: str = "urls"
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Download:
    """The outcome of fetching one URL. `data` is set on success, `reason` on failure."""

    url: str
    data: bytes | None = None
    final_url: str | None = None
    status: int | None = None
    content_type: str | None = None
    image_format: str | None = None  # detected from the magic bytes: jpeg, png, webp, gif, bmp
    reason: str | None = None  # short machine-readable code, e.g. "http_404", "not_an_image"
    detail: str | None = None  # a human sentence for the report
    attempts: int = 1
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.data is not None and self.reason is None


@dataclass
class Outcome:
    """What happened to one candidate URL, for report.json: kept, or the reason it was dropped."""

    url: str
    status: str = "pending"  # kept | dropped
    reason: str | None = None
    detail: str | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}
