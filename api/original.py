"""The original tool's dialect of the API, for its dashboard and the scripts written against it.

The original's page sends `out_dir` as a folder under its project's `data/` folder, reads
`detail` as a sentence, polls a job until its status is no longer `running`, and its delete
button promises that the images stay on disk. Jobs it submits answer it in those terms; every
other client sees the service's own fields, which these only add to.
"""

from __future__ import annotations

import re
from pathlib import Path

from flask import Blueprint, abort, current_app, send_from_directory
from flask.typing import ResponseReturnValue

from common.lifecycle import FINAL, JobStatus
from common.names import MAX_OUTPUT

# The original wrote under <project>/data/; here the data folder takes that place.
DATA_PREFIX = "data"
PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class OutDirError(ValueError):
    """An `out_dir` that cannot be mapped inside the data folder; the message says why."""


def output_for(out_dir: str, job_id: str) -> str:
    """The output folder for the original's `out_dir`: like the original, every run gets a folder of
    its own, named after the given path and the job, inside the data folder.

    `data/naver_collected` -> `naver_collected-1a2b3c4d`; `data/naver_collected/my-run` ->
    `naver_collected-my-run-1a2b3c4d`; a path that would leave the data folder is refused.
    """
    raw = out_dir.strip()
    if raw.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", raw):
        raise OutDirError(f"out_dir {out_dir[:80]!r} is an absolute path; give a folder under data/, "
                          "e.g. data/naver_collected.")
    parts = [p for p in re.split(r"[/\\]+", raw) if p not in ("", ".")]
    if parts and parts[0] == DATA_PREFIX:
        parts = parts[1:]
    for part in parts:
        if not PART.fullmatch(part):
            raise OutDirError(f"out_dir {out_dir[:80]!r} has the part {part[:40]!r}; each folder name must be "
                              "letters, digits, '.', '_' or '-' and may not start with '.' (no '..').")
    name = "-".join([*parts, job_id[:8]])
    if len(name) > MAX_OUTPUT:
        raise OutDirError(f"out_dir {out_dir[:80]!r} is too long: the folder name it gives, {name!r}, must be at "
                          f"most {MAX_OUTPUT} characters.")
    return name


def shown_status(status: str) -> str:
    """The original had no queued or cancelling step: its jobs were `running` until they ended."""
    return status if status in FINAL else JobStatus.RUNNING.value


def sentence(field_errors: list[dict[str, str]]) -> str:
    """Field errors as the one readable string the original's page shows."""
    return "; ".join(f"{e['field']}: {e['message']}" for e in field_errors) or "The request is not valid."


# -- the original's own page, served where it looks for itself -----------------------------------

bp = Blueprint("original_dashboard", __name__)


@bp.get("/static/<path:name>")
def original_page(name: str) -> ResponseReturnValue:
    """The files of `original_dashboard_dir` under /static/, the paths the original's page links to
    (its own scripts, styles and log.html). Without the setting there is nothing here."""
    folder = current_app.config["CVDB_SETTINGS"].original_dashboard_dir
    if folder is None:
        abort(404, description="No original dashboard is configured; set CVDB_ORIGINAL_DASHBOARD_DIR to the "
              "original tool's dashboard/static folder to serve it at /static/index.html.")
    return send_from_directory(Path(folder).expanduser().resolve(), name, max_age=0)
