"""Write the dataset: report.json, img_0001.jpg ... (or class folders, shards), manifest.jsonl last, atomically.

A folder belongs to whoever claimed it (the `.cvdb-owner` marker: a job id, or `cvdb build`);
only its owner replaces or removes what it wrote there, and never through a symlink.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.names import DATASET_FILE, IMAGE_FILE

MANIFEST = "manifest.jsonl"
REPORT = "report.json"
CLASSES = "classes.json"  # label, folder and index of each class, in a dataset of classes
EMBEDDINGS = "embeddings.npy"  # the kept pictures' CLIP vectors (float16), in manifest order
EXTRAS = (CLASSES, EMBEDDINGS)  # written beside the manifest, before it
STAGING = ".staging"
# Who claimed the folder: a service job's id, or LOCAL_OWNER for `cvdb build`.
OWNER = ".cvdb-owner"
LOCAL_OWNER = "cvdb build"


class OutputError(Exception):
    """The output folder cannot be used; the message says why and what to do."""


def resolve_output(out: Path, data_root: Path) -> Path:
    """The output folder, refused if it would escape the data folder (symlinks included)."""
    root = data_root.expanduser().resolve()
    target = out.expanduser()
    target = (target if target.is_absolute() else Path.cwd() / target).resolve()
    if target == root or not target.is_relative_to(root):
        # Named as given, relative to the data folder where it is under it: no server path in
        # what the API passes on (an absolute CVDB_DATA_ROOT is not printed).
        shown = out.relative_to(data_root) if out.is_relative_to(data_root) else out
        where = "" if data_root.is_absolute() else f" {data_root}"
        raise OutputError(
            f"output folder {shown} is not inside the data folder{where} (CVDB_DATA_ROOT); "
            "choose a folder under it or set CVDB_DATA_ROOT"
        )
    return target


def prepare_output(out_dir: Path, overwrite: bool, owner: str) -> None:
    """Claim the folder for `owner`, then remove the earlier dataset's own files (never anyone else's).

    Refused: another owner's folder, an earlier dataset unless `overwrite`, any file this tool did
    not write, and symlinks (the folder, its marker or its staging folder).
    """
    refuse_link(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a folder")
    refuse_link(out_dir / STAGING)
    current = owner_of(out_dir)
    if current not in (None, owner):
        raise OutputError(f"{out_dir} belongs to {_describe(current)}; pick another folder")
    if (out_dir / MANIFEST).exists() and not overwrite:
        raise OutputError(f"{out_dir} already holds a dataset; pass --overwrite to replace it or pick another --out")
    foreign = foreign_files(out_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise OutputError(f"{out_dir} holds files this tool did not write ({shown}); pick an empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_owner(out_dir, owner)
    _remove_dataset_files(out_dir)


def refuse_link(path: Path) -> None:
    """Never write or delete through a symlink: it could lead anywhere, outside the data folder too."""
    if path.is_symlink():
        raise OutputError(f"{path} is a symbolic link; this tool never writes or deletes through one, "
                          "so replace it with a real folder or pick another name")


def _describe(owner: str) -> str:
    return "a dataset written by cvdb build" if owner == LOCAL_OWNER else f"service job {owner}"


def write_owner(out_dir: Path, owner: str) -> None:
    refuse_link(out_dir / OWNER)
    atomic_write(out_dir / OWNER, f"{owner}\n".encode())


def owner_of(out_dir: Path) -> str | None:
    """Who claimed `out_dir` (a job id or LOCAL_OWNER); None when no marker is there."""
    marker = out_dir / OWNER
    refuse_link(marker)
    if not regular_file(marker):
        return None
    return marker.read_text(encoding="utf-8", errors="replace").strip()


def regular_file(path: Path) -> bool:
    """A regular file itself: lstat, so a symlink never counts, whatever it points at."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def is_dataset_file(out_dir: Path, name: object) -> bool:
    """A path the tool may have written, relative to `out_dir` (img_0001.jpg, train/cat/img_0001.jpg,
    a shard): plain names, folders that are real folders, a regular file. Nothing else is removed."""
    if not isinstance(name, str) or DATASET_FILE.fullmatch(name) is None:
        return False
    folder = out_dir
    for part in name.split("/")[:-1]:
        folder = folder / part
        if folder.is_symlink() or not folder.is_dir():
            return False
    return regular_file(out_dir / name)


def is_image(out_dir: Path, name: object) -> bool:
    """A dataset file named img_NNNN.jpg, in `out_dir` or its class folders: the only files served."""
    return isinstance(name, str) and IMAGE_FILE.fullmatch(name) is not None and is_dataset_file(out_dir, name)


def manifest_rows(out_dir: Path) -> list[dict[str, Any]]:
    """The manifest's rows, skipping lines that are not JSON objects; [] without a (regular) manifest."""
    path = out_dir / MANIFEST
    if not regular_file(path):
        return []
    rows: list[Any] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return [row for row in rows if isinstance(row, dict)]


def _report_files(out_dir: Path) -> list[Any]:
    path = out_dir / REPORT
    try:
        report = json.loads(path.read_text(encoding="utf-8")) if regular_file(path) else {}
    except ValueError:
        return []
    files = report.get("files") if isinstance(report, dict) else None
    return files if isinstance(files, list) else []


def named_files(out_dir: Path) -> list[str]:
    """The files the dataset in `out_dir` names (manifest rows, report's file list), relative to it:
    what the tool wrote."""
    names = [row.get("file") for row in manifest_rows(out_dir)] + _report_files(out_dir)
    return list(dict.fromkeys(n for n in names if is_dataset_file(out_dir, n)))


def foreign_files(out_dir: Path) -> list[str]:
    """Paths in `out_dir` this tool did not write (a symlink is never its own), sorted."""
    if not out_dir.is_dir():
        return []
    ours = {MANIFEST, REPORT, OWNER, *EXTRAS, *named_files(out_dir)}
    return sorted(_foreign_in(out_dir, "", ours))


def _foreign_in(folder: Path, prefix: str, ours: set[str]) -> list[str]:
    found: list[str] = []
    for path in folder.iterdir():
        name = prefix + path.name
        if name == STAGING:
            if not path.is_dir() or path.is_symlink():
                found.append(name)
        elif path.is_dir() and not path.is_symlink():
            found += _foreign_in(path, name + "/", ours) if any(n.startswith(name + "/") for n in ours) else [name]
        elif name not in ours or not regular_file(path):
            found.append(name)
    return found


def _unlink_regular(path: Path) -> None:
    if regular_file(path):
        path.unlink(missing_ok=True)


def _remove_dataset_files(out_dir: Path) -> None:
    names = named_files(out_dir)  # read before the files that name them go
    _unlink_regular(out_dir / MANIFEST)  # first: from here on the folder does not look complete
    for name in names:
        (out_dir / name).unlink(missing_ok=True)
    for name in EXTRAS:
        _unlink_regular(out_dir / name)
    _unlink_regular(out_dir / REPORT)
    # Class and split folders go when that empties them; anything else in them stays, and so do they.
    folders = {out_dir.joinpath(*parts[:i]) for parts in (n.split("/")[:-1] for n in names) for i in range(1, len(parts) + 1)}
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        if not folder.is_symlink():
            with contextlib.suppress(OSError):
                folder.rmdir()


def remove_dataset(out_dir: Path, owner: str) -> bool:
    """Remove what `owner` wrote in `out_dir` (named images, manifest, report, staging, marker) and the
    folder if that empties it. False, touching nothing, when the marker does not name `owner`."""
    refuse_link(out_dir)
    if not out_dir.is_dir() or owner_of(out_dir) != owner:
        return False
    refuse_link(out_dir / STAGING)
    _remove_dataset_files(out_dir)
    remove_staging(out_dir)
    (out_dir / OWNER).unlink(missing_ok=True)  # last: an interrupted removal can be retried
    with contextlib.suppress(OSError):
        out_dir.rmdir()  # only succeeds when empty: whatever else is there is not ours
    return True


def release(out_dir: Path, owner: str) -> None:
    """Give the folder up when `owner` (or nobody) left nothing in it but the marker: a failed or cancelled run."""
    refuse_link(out_dir)
    if not out_dir.is_dir() or owner_of(out_dir) not in (None, owner):
        return
    if all(p.name == OWNER for p in out_dir.iterdir()):
        (out_dir / OWNER).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out_dir.rmdir()


def make_staging(out_dir: Path) -> Path:
    """`out_dir/.staging`, made with mkdir; refused unless it is a real folder right inside `out_dir`."""
    refuse_link(out_dir)
    staging = out_dir / STAGING
    with contextlib.suppress(FileExistsError):
        staging.mkdir(parents=True)
    refuse_link(staging)
    if not staging.is_dir() or staging.resolve() != out_dir.resolve() / STAGING:
        raise OutputError(f"{staging} is not a folder inside {out_dir}; remove it and run again")
    return staging


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


def write_dataset(
    out_dir: Path, files: Sequence[tuple[Path, str]], rows: Sequence[dict[str, Any]], report: dict[str, Any],
    extras: Mapping[str, bytes] | None = None,
) -> None:
    """report.json (naming every file), then the staged files moved to their paths, `extras`
    (classes.json, embeddings.npy), then manifest.jsonl.

    `files` pairs each staged file with its path in the dataset (img_0001.jpg, train/cat/img_0001.jpg,
    a shard). The report comes first so an interrupted export never leaves a file no report names:
    a later run or a delete removes exactly those.
    """
    named = {**report, "files": [name for _, name in files]}
    atomic_write(out_dir / REPORT, json.dumps(named, ensure_ascii=False, indent=2).encode())
    folders = {(out_dir / name).parent for _, name in files}
    for folder in sorted(folders, key=lambda f: len(f.parts)):
        refuse_link(folder)
        folder.mkdir(parents=True, exist_ok=True)
    for staged, name in files:
        fsync_file(staged)  # staged without fsync; a kept file must be on disk before the manifest
        os.replace(staged, out_dir / name)  # same filesystem: an atomic rename
    for folder in folders:
        fsync_file(folder)
    for name, data in (extras or {}).items():
        atomic_write(out_dir / name, data)
    manifest = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(out_dir / MANIFEST, manifest.encode())
    fsync_file(out_dir)


def write_failure_report(out_dir: Path, report: dict[str, Any]) -> None:
    """A run that kept nothing still explains itself; no manifest, so it never looks complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / REPORT, json.dumps(report, ensure_ascii=False, indent=2).encode())


def remove_staging(out_dir: Path) -> None:
    # rmtree refuses a symlinked .staging (ignored here) and never follows links inside it.
    shutil.rmtree(out_dir / STAGING, ignore_errors=True)
