"""Write the dataset: img_0001.jpg ..., report.json, and manifest.jsonl last, all atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"
REPORT = "report.json"
STAGING = ".staging"


class OutputError(Exception):
    """The output folder cannot be used; the message says why and what to do."""


def resolve_output(out: Path, data_root: Path) -> Path:
    """The output folder, refused if it would escape the data folder (symlinks included)."""
    root = data_root.expanduser().resolve()
    target = out.expanduser()
    target = (target if target.is_absolute() else Path.cwd() / target).resolve()
    if target == root or not target.is_relative_to(root):
        raise OutputError(
            f"output folder {out} is not inside the data folder {root}; "
            "choose a folder under it or set CVDB_DATA_ROOT"
        )
    return target


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier dataset unless asked; never delete foreign files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a folder")
    if (out_dir / MANIFEST).exists() and not overwrite:
        raise OutputError(f"{out_dir} already holds a dataset; pass --overwrite to replace it or pick another --out")
    foreign = [p.name for p in out_dir.glob("*") if not _is_ours(p)] if out_dir.exists() else []
    if foreign:
        raise OutputError(f"{out_dir} holds files this tool did not write ({', '.join(sorted(foreign)[:3])}...); pick an empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Remove the commit marker first: from here on the folder does not look complete.
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for old in out_dir.glob("img_*.jpg"):
        old.unlink()


def _is_ours(path: Path) -> bool:
    return path.name in (MANIFEST, REPORT, STAGING) or (path.name.startswith("img_") and path.suffix == ".jpg")


def fsync_file(path: Path) -> None:
    """fsync a file or folder by path (a folder's fsync makes its renames durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old file or the whole new one.

    `durable=False` skips the fsync, for scratch files that are fsynced later if they are kept.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_name(index: int) -> str:
    return f"img_{index:04d}.jpg"


def write_dataset(out_dir: Path, staged_files: Sequence[Path], rows: Sequence[dict[str, Any]], report: dict[str, Any]) -> None:
    """Move staged JPEGs into place as img_NNNN.jpg, then report.json, then manifest.jsonl.

    `rows[i]` describes `staged_files[i]` and already carries its final `file` name.
    """
    for staged, row in zip(staged_files, rows, strict=True):
        fsync_file(staged)  # staged without fsync; a kept file must be on disk before the manifest
        os.replace(staged, out_dir / row["file"])  # same filesystem: an atomic rename
    fsync_file(out_dir)
    atomic_write(out_dir / REPORT, json.dumps(report, ensure_ascii=False, indent=2).encode())
    manifest = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(out_dir / MANIFEST, manifest.encode())
    fsync_file(out_dir)


def write_failure_report(out_dir: Path, report: dict[str, Any]) -> None:
    """A run that kept nothing still explains itself; no manifest, so it never looks complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / REPORT, json.dumps(report, ensure_ascii=False, indent=2).encode())


def remove_staging(out_dir: Path) -> None:
    shutil.rmtree(out_dir / STAGING, ignore_errors=True)
