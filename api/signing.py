"""Short-lived signed links to a job's results, for when bearer tokens protect the API.

An `<img src>` or a download link cannot send an Authorization header, so the API hands out
result URLs carrying `exp` and an HMAC `sig` (keyed by the configured tokens) that open only
that one path until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence

from flask import current_app

from common.names import IMAGE_PATH

# An image of a flat dataset or of a class (and split) folder, the archive, the manifest.
SIGNABLE = re.compile(rf"^/api/jobs/[0-9a-f-]{{36}}/(images/{IMAGE_PATH}|archive|manifest)$")
LINK_TTL_S = 3600
# What link() writes, in ASCII only: str.isdigit() and int() also take '²' or '٣', and int()
# refuses more than 4300 digits; compare_digest refuses non-ASCII str.
EXPIRES = re.compile(r"[0-9]{1,12}")
SIGNATURE = re.compile(r"[0-9a-f]{64}")


def configured_tokens() -> list[str]:
    return [t.strip() for t in current_app.config["CVDB_SETTINGS"].api_tokens.split(",") if t.strip()]


def _signature(path: str, expires: int, tokens: Sequence[str]) -> str:
    key = hashlib.sha256("\n".join(sorted(tokens)).encode()).digest()
    return hmac.new(key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def link(path: str, ttl_s: int = LINK_TTL_S) -> str:
    """`path` as clients should use it: signed when tokens are configured, plain otherwise."""
    tokens = configured_tokens()
    if not tokens or not SIGNABLE.match(path):
        return path
    expires = int(time.time()) + ttl_s
    return f"{path}?exp={expires}&sig={_signature(path, expires, tokens)}"


def carries_signature(args: Mapping[str, str]) -> bool:
    """The request looks like a signed link (valid or not)."""
    return "exp" in args or "sig" in args


def valid(path: str, args: Mapping[str, str], tokens: Sequence[str]) -> bool:
    """True for an unexpired, untampered signed link to this very path; malformed ones are just invalid."""
    expires, given = args.get("exp", ""), args.get("sig", "")
    if not SIGNABLE.match(path) or not EXPIRES.fullmatch(expires) or not SIGNATURE.fullmatch(given):
        return False
    if int(expires) < time.time():
        return False
    return hmac.compare_digest(given.encode(), _signature(path, int(expires), tokens).encode())
