"""The WebDataset and Hugging Face writers, read back with the real webdataset and datasets libraries."""

from __future__ import annotations

import hashlib
import json
import socket
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from common.pipeline.formats import Sample, write_hf, write_webdataset

CLASSES = ["red panda", "고양이", "fox"]
KEY_STEMS = ["red-panda", "dataset-5f1c2a9e", "fox"]
COLOURS = [(200, 60, 30), (30, 160, 90), (40, 70, 220), (240, 220, 40), (120, 30, 150), (10, 10, 10), (250, 250, 250)]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Any connection or name look-up is refused and recorded: neither library may need the network."""
    tries: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        tries.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield tries
    assert tries == [], f"something tried to reach the network: {tries}"


def make_jpeg(path: Path, n: int) -> Path:
    """A small JPEG with its own colour and stripe pattern."""
    image = Image.new("RGB", (40, 30), COLOURS[n % len(COLOURS)])
    draw = ImageDraw.Draw(image)
    for x in range(0, 40, 4 + n):
        draw.rectangle((x, 0, x + 1, 29), fill=COLOURS[(n + 3) % len(COLOURS)])
    image.save(path, "JPEG", quality=90)
    return path


def make_samples(folder: Path, splits: list[str | None]) -> list[Sample]:
    """One sample per entry of `splits`, the classes taken in turn; input files are named <key>.jpg."""
    folder.mkdir(exist_ok=True)
    samples = []
    for n, split in enumerate(splits):
        index = n % len(CLASSES)
        key = f"{KEY_STEMS[index]}_{n + 1:04d}"
        jpeg = make_jpeg(folder / f"{key}.jpg", n)
        row = {"url": f"https://example.com/{n}.jpg", "label": CLASSES[index], "split": split,
               "sha256": hashlib.sha256(jpeg.read_bytes()).hexdigest(), "scores": {"clip": 0.25 + n / 100}}
        samples.append(Sample(jpeg=jpeg, label=CLASSES[index], index=index, split=split, key=key, row=row))
    return samples


def empty_folder(path: Path) -> Path:
    path.mkdir()
    return path


def read_shards(shards: list[Path], decode: str | None = None) -> list[dict[str, Any]]:
    import webdataset as wds

    dataset = wds.WebDataset([str(s) for s in shards], shardshuffle=False)
    return list(dataset.decode(decode) if decode else dataset)


def tars(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_webdataset_shards_read_back(tmp_path: Path) -> None:
    samples = make_samples(tmp_path / "in", [None] * 5)
    before = {s.key: (s.jpeg.read_bytes(), s.jpeg.stat().st_mtime_ns) for s in samples}
    dest = empty_folder(tmp_path / "out")
    places = write_webdataset(dest, samples, CLASSES, shard_size=2)

    assert tars(dest) == ["00000.tar", "00001.tar", "00002.tar"]  # nothing partial left behind
    assert [p["file"] for p in places] == ["00000.tar", "00000.tar", "00001.tar", "00001.tar", "00002.tar"]
    assert [p["key"] for p in places] == [s.key for s in samples]
    read = read_shards(sorted(dest.glob("*.tar")))
    assert Counter(r["__key__"] for r in read) == Counter(s.key for s in samples)
    by_key = {r["__key__"]: r for r in read}
    for sample, place in zip(samples, places):
        got = by_key[sample.key]
        assert got["jpg"] == before[sample.key][0]
        assert got["cls"] == str(sample.index).encode()
        assert json.loads(got["json"].decode("utf-8")) == sample.row
        assert got["__url__"].endswith("/" + place["file"])
    assert json.loads(by_key[samples[1].key]["json"])["label"] == "고양이"
    assert "고양이".encode() in by_key[samples[1].key]["json"]  # UTF-8, not \uXXXX escapes
    # The inputs are only read.
    assert {s.key: (s.jpeg.read_bytes(), s.jpeg.stat().st_mtime_ns) for s in samples} == before


def test_webdataset_decodes_with_the_standard_handlers(tmp_path: Path) -> None:
    samples = make_samples(tmp_path / "in", [None] * 3)
    dest = empty_folder(tmp_path / "out")
    write_webdataset(dest, samples, CLASSES)
    assert tars(dest) == ["00000.tar"]
    read = {r["__key__"]: r for r in read_shards([dest / "00000.tar"], decode="pil")}
    for sample in samples:
        with Image.open(sample.jpeg) as expected:
            assert np.array_equal(np.array(read[sample.key]["jpg"]), np.array(expected))
        assert read[sample.key]["cls"] == sample.index
        assert read[sample.key]["json"] == sample.row


def test_webdataset_writes_one_set_of_shards_per_split(tmp_path: Path) -> None:
    splits: list[str | None] = ["test", "train", "val", "train", "train", "test", "train"]
    samples = make_samples(tmp_path / "in", splits)
    dest = empty_folder(tmp_path / "out")
    places = write_webdataset(dest, samples, CLASSES, shard_size=3)

    assert tars(dest) == ["test/00000.tar", "train/00000.tar", "train/00001.tar", "val/00000.tar"]
    for split in ("train", "val", "test"):
        mine = [s for s in samples if s.split == split]
        read = read_shards(sorted((dest / split).glob("*.tar")))
        assert [r["__key__"] for r in read] == [s.key for s in mine]  # input order within a split
    assert [p["file"] for p in places] == ["test/00000.tar", "train/00000.tar", "val/00000.tar",
                                           "train/00000.tar", "train/00000.tar", "test/00000.tar",
                                           "train/00001.tar"]

    # Only the splits present get a folder.
    dest2 = empty_folder(tmp_path / "out2")
    write_webdataset(dest2, make_samples(tmp_path / "in2", ["train", "test", "train"]), CLASSES)
    assert tars(dest2) == ["test/00000.tar", "train/00000.tar"]


def test_webdataset_is_byte_identical_and_keeps_members_together(tmp_path: Path) -> None:
    samples = make_samples(tmp_path / "in", ["train", "val", "train", "train", "test"])
    first = write_webdataset(empty_folder(tmp_path / "a"), samples, CLASSES, shard_size=2)
    for s in samples:  # other file times must not leak into the shards
        s.jpeg.touch()
    second = write_webdataset(empty_folder(tmp_path / "b"), samples, CLASSES, shard_size=2)

    assert first == second
    assert tars(tmp_path / "a") == tars(tmp_path / "b")
    for name in tars(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    with tarfile.open(tmp_path / "a" / "train" / "00000.tar") as tar:
        members = tar.getmembers()
    keys = [s.key for s in samples if s.split == "train"][:2]
    assert [m.name for m in members] == [f"{k}.{ext}" for k in keys for ext in ("jpg", "cls", "json")]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname, m.isfile()) == (0, 0, 0, 0o644, "", "", True)


def load_hf(dest: Path) -> Any:
    import datasets

    loaded = datasets.load_from_disk(str(dest))
    assert isinstance(loaded, datasets.DatasetDict)
    return loaded


def expected_pixels(samples: list[Sample]) -> dict[str, np.ndarray]:
    out = {}
    for s in samples:
        with Image.open(s.jpeg) as image:
            out[s.key] = np.array(image)
    return out


def test_hf_folder_loads_with_splits_and_stands_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    samples = make_samples(tmp_path / "in", ["test", "train", "val", "train", "val", "train"])
    pixels = expected_pixels(samples)
    raw = {s.key: s.jpeg.read_bytes() for s in samples}
    dest = empty_folder(tmp_path / "out")
    # Files named <key>.jpg in the working folder: their bytes must still be embedded, not their path.
    monkeypatch.chdir(tmp_path / "in")
    places = write_hf(dest, samples, CLASSES)
    monkeypatch.chdir(tmp_path)
    for s in samples:
        s.jpeg.unlink()

    assert places[:3] == [{"hf_split": "test", "hf_row": 0}, {"hf_split": "train", "hf_row": 0},
                          {"hf_split": "validation", "hf_row": 0}]
    loaded = load_hf(dest)
    assert list(loaded) == ["train", "validation", "test"]
    assert [len(loaded[name]) for name in loaded] == [3, 2, 1]
    assert loaded["train"].features["label"].names == CLASSES
    for sample, place in zip(samples, places):
        example = loaded[place["hf_split"]][place["hf_row"]]
        assert example["label"] == sample.index
        assert np.array_equal(np.array(example["image"]), pixels[sample.key])
        assert (example["url"], example["query"], example["sha256"]) == (
            sample.row["url"], sample.label, sample.row["sha256"])
        stored = loaded[place["hf_split"]].cast_column("image", datasets.Image(decode=False))[place["hf_row"]]
        assert stored["image"] == {"bytes": raw[sample.key], "path": f"{sample.key}.jpg"}
    assert loaded["validation"][1]["query"] == "고양이"
    # No file in the folder names the input folder.
    for path in dest.rglob("*"):
        assert path.is_dir() or str(tmp_path / "in").encode() not in path.read_bytes(), path


def test_hf_without_splits_is_one_train_split_in_input_order(tmp_path: Path) -> None:
    samples = make_samples(tmp_path / "in", [None] * 4)
    pixels = expected_pixels(samples)
    dest = empty_folder(tmp_path / "out")
    places = write_hf(dest, samples, CLASSES)

    assert places == [{"hf_split": "train", "hf_row": n} for n in range(4)]
    loaded = load_hf(dest)
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert train["label"][:] == [0, 1, 2, 0]
    assert train["query"][:] == ["red panda", "고양이", "fox", "red panda"]
    assert train.features["label"].int2str(1) == "고양이"
    for n, sample in enumerate(samples):
        assert np.array_equal(np.array(train[n]["image"]), pixels[sample.key])


def with_change(sample: Sample, **change: Any) -> Sample:
    return Sample(**{**sample.__dict__, **change})


BAD_INPUTS: dict[str, tuple[Callable[[list[Sample]], list[Sample]], str]] = {
    "no samples": (lambda s: [], "no samples"),
    "index too high": (lambda s: [s[0], with_change(s[1], index=3)], "class index 3, outside the 3 classes"),
    "negative index": (lambda s: [with_change(s[0], index=-1)], "class index -1"),
    "dot in key": (lambda s: [with_change(s[0], key="a.b")], "without dots or slashes"),
    "slash in key": (lambda s: [with_change(s[0], key="a/b")], "without dots or slashes"),
    "empty key": (lambda s: [with_change(s[0], key="")], "must be non-empty"),
    "duplicate key": (lambda s: [s[0], with_change(s[1], key=s[0].key)], "appears twice"),
    "unknown split": (lambda s: [s[0], with_change(s[1], split="valid")], "unknown split 'valid'"),
    "mixed splits": (lambda s: [s[0], with_change(s[1], split=None)], "either every sample has a split"),
}


@pytest.mark.parametrize("writer", [write_webdataset, write_hf], ids=["webdataset", "hf"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_writing(tmp_path: Path, writer: Callable[..., Any], case: str) -> None:
    change, message = BAD_INPUTS[case]
    samples = change(make_samples(tmp_path / "in", ["train", "val"]))
    dest = empty_folder(tmp_path / "out")
    with pytest.raises(ValueError, match=message):
        writer(dest, samples, CLASSES)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("writer", [write_webdataset, write_hf], ids=["webdataset", "hf"])
def test_a_folder_that_is_not_empty_is_refused(tmp_path: Path, writer: Callable[..., Any]) -> None:
    samples = make_samples(tmp_path / "in", [None])
    dest = empty_folder(tmp_path / "out")
    (dest / "other.txt").write_text("someone else's")
    with pytest.raises(ValueError, match="existing empty folder"):
        writer(dest, samples, CLASSES)
    assert tars(dest) == ["other.txt"]


def test_shard_size_below_one_is_refused(tmp_path: Path) -> None:
    samples = make_samples(tmp_path / "in", [None])
    with pytest.raises(ValueError, match="shard_size must be at least 1"):
        write_webdataset(empty_folder(tmp_path / "out"), samples, CLASSES, shard_size=0)
