"""How long to wait before trying an HTTP request again, for the downloader and the search sources alike:
exponential backoff, or the server's Retry-After within a limit."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def retry_wait(retry: int, asked: float | None, backoff_s: float, max_asked_s: float) -> float | None:
    """Seconds before retry number `retry` (1 for the first): `asked` (the server's Retry-After) when
    given, else backoff_s doubling each time; None when the server asks for longer than `max_asked_s`."""
    if asked is None:
        return backoff_s * 2 ** (retry - 1)
    return asked if asked <= max_asked_s else None


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date); None when absent or
    unreadable. A date in the past means now."""
    if not value or not value.strip():
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
