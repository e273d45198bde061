"""The two other dataset formats: WebDataset tar shards and a Hugging Face `datasets` folder.

Each writer fills an empty scratch folder and returns, per sample, where it went.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from common.names import (
    SPLITS,  # also the order shards and DatasetDict splits are written in
)

HF_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class Sample:
    """One finished picture and what the formats need to know about it."""

    jpeg: Path  # read, never changed: the caller still owns it
    label: str  # the query as the user gave it
    index: int  # into `classes`
    split: str | None  # train | val | test; None when the dataset has no splits
    key: str  # unique, without dots or slashes
    row: dict[str, Any]  # the manifest row, JSON-serialisable


def write_webdataset(dest: Path, samples: Sequence[Sample], classes: Sequence[str],
                     shard_size: int = 1000) -> list[dict[str, Any]]:
    """Tar shards dest/[split/]00000.tar ..., each sample as <key>.jpg, <key>.cls, <key>.json."""
    _check(dest, samples, classes)
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, not {shard_size}")
    places: dict[str, dict[str, Any]] = {}
    for split, group in _by_split(samples):
        folder = dest / split if split else dest
        folder.mkdir(exist_ok=True)
        for number, start in enumerate(range(0, len(group), shard_size)):
            shard = folder / f"{number:05d}.tar"
            part = group[start:start + shard_size]
            _write_shard(shard, part)
            name = shard.relative_to(dest).as_posix()
            places.update({s.key: {"file": name, "key": s.key} for s in part})
    return [places[s.key] for s in samples]


def write_hf(dest: Path, samples: Sequence[Sample], classes: Sequence[str]) -> list[dict[str, Any]]:
    """A folder `datasets.load_from_disk` opens: a DatasetDict, `train` alone when there are no splits."""
    _check(dest, samples, classes)
    import datasets  # slow to import; only this format pays for it

    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=list(classes)),
        "url": datasets.Value("string"),
        "query": datasets.Value("string"),
        "sha256": datasets.Value("string"),
    })
    parts: dict[str, Any] = {}
    places: dict[str, dict[str, Any]] = {}
    for split, group in _by_split(samples):
        name = HF_SPLIT_NAMES[split or "train"]
        parts[name] = _hf_split(datasets, features, group)
        places.update({s.key: {"hf_split": name, "hf_row": row} for row, s in enumerate(group)})
    with _no_progress_bars(datasets):
        datasets.DatasetDict(parts).save_to_disk(str(dest))
    return [places[s.key] for s in samples]


def _hf_split(datasets: ModuleType, features: Any, group: list[Sample]) -> Any:
    """One split in memory, the JPEG bytes embedded so the folder never points at the input files."""
    import pyarrow as pa

    # Arrow data rather than {"bytes", "path"} dicts: Image.encode_example drops the bytes of a dict
    # whose path names an existing file, and "<key>.jpg" may well exist in the working folder.
    images = pa.StructArray.from_arrays(
        [pa.array([s.jpeg.read_bytes() for s in group], pa.binary()),
         pa.array([f"{s.key}.jpg" for s in group], pa.string())],
        ["bytes", "path"],
    )
    return datasets.Dataset.from_dict({
        "image": images,
        "label": [s.index for s in group],
        "url": [s.row.get("url") for s in group],
        "query": [s.label for s in group],
        "sha256": [s.row.get("sha256") for s in group],
    }, features=features)


@contextlib.contextmanager
def _no_progress_bars(datasets: ModuleType) -> Iterator[None]:
    """datasets draws tqdm bars while saving; the tool reports progress its own way."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def _write_shard(shard: Path, group: Sequence[Sample]) -> None:
    """One tar under a temporary name, renamed when complete: a shard that exists is whole."""
    partial = shard.with_name(shard.name + ".partial")
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for s in group:
                # Readers group consecutive members by key: keep a sample's three together.
                _add(tar, f"{s.key}.jpg", s.jpeg.read_bytes())
                _add(tar, f"{s.key}.cls", str(s.index).encode("ascii"))
                _add(tar, f"{s.key}.json", json.dumps(s.row, ensure_ascii=False).encode("utf-8"))
        os.replace(partial, shard)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata: the same samples give byte-identical shards, whoever writes them and when.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _by_split(samples: Sequence[Sample]) -> list[tuple[str | None, list[Sample]]]:
    """The samples grouped by split in the order train, val, test, each group in input order."""
    if samples[0].split is None:
        return [(None, list(samples))]
    groups = [(split, [s for s in samples if s.split == split]) for split in SPLITS]
    return [(split, group) for split, group in groups if group]


def _check(dest: Path, samples: Sequence[Sample], classes: Sequence[str]) -> None:
    """Refuse what would make a broken or ambiguous dataset, before anything is written."""
    if dest.is_symlink() or not dest.is_dir() or any(dest.iterdir()):
        raise ValueError(f"{dest} must be an existing empty folder (not a symbolic link)")
    if not samples:
        raise ValueError("there are no samples to write; a dataset needs at least one picture")
    if len(set(classes)) != len(classes):
        raise ValueError(f"the class names must be distinct, got {list(classes)}")
    seen: set[str] = set()
    for s in samples:
        if not 0 <= s.index < len(classes):
            raise ValueError(f"sample {s.key!r} has class index {s.index}, outside the {len(classes)} classes")
        if not s.key or "." in s.key or "/" in s.key:
            raise ValueError(f"sample key {s.key!r} must be non-empty, without dots or slashes")
        if s.key in seen:
            raise ValueError(f"sample key {s.key!r} appears twice; keys must be unique")
        if s.split is not None and s.split not in SPLITS:
            raise ValueError(f"sample {s.key!r} has unknown split {s.split!r}; use train, val, test or None")
        seen.add(s.key)
    if len({s.split is None for s in samples}) > 1:
        raise ValueError("either every sample has a split or none has; they are mixed")
