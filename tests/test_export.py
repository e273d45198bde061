"""Output folder rules and atomic, manifest-last dataset writing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.names import image_name
from common.pipeline import export


@pytest.mark.parametrize("out", ["../escape", "/etc/cvdb", ".", "data/../../x"])
def test_output_cannot_escape_the_data_folder(out: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(export.OutputError, match="not inside the data folder"):
        export.resolve_output(Path(out), tmp_path / "data")


def test_symlink_out_of_the_data_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(export.OutputError):
        export.resolve_output(root / "link" / "x", root)


def test_output_inside_the_data_folder_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert export.resolve_output(Path("data/red-panda"), Path("data")) == tmp_path / "data" / "red-panda"


def test_an_existing_dataset_is_not_overwritten_without_asking(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / export.MANIFEST).write_text('{"file": "img_0001.jpg"}\n')
    (out / "img_0001.jpg").write_bytes(b"old")
    with pytest.raises(export.OutputError, match="--overwrite"):
        export.prepare_output(out, overwrite=False, owner=export.LOCAL_OWNER)
    export.prepare_output(out, overwrite=True, owner=export.LOCAL_OWNER)
    assert not (out / export.MANIFEST).exists() and not (out / "img_0001.jpg").exists()


def test_foreign_files_are_never_deleted(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(export.OutputError, match="did not write"):
        export.prepare_output(out, overwrite=True, owner=export.LOCAL_OWNER)
    assert (out / "thesis.docx").read_text() == "precious"


def test_a_dataset_holds_its_images_report_and_manifest(tmp_path: Path) -> None:
    out = tmp_path / "set"
    export.prepare_output(out, overwrite=False, owner=export.LOCAL_OWNER)
    staged = []
    for i in range(2):
        path = tmp_path / f"s{i}.jpg"
        path.write_bytes(b"jpeg%d" % i)
        staged.append(path)
    rows = [{"file": image_name(i + 1), "query": "q"} for i in range(2)]
    export.write_dataset(out, [(s, r["file"]) for s, r in zip(staged, rows)], rows, {"status": "done"})
    names = sorted(os.listdir(out))
    assert names == [export.OWNER, "img_0001.jpg", "img_0002.jpg", "manifest.jsonl", "report.json"]
    assert [json.loads(line)["file"] for line in (out / export.MANIFEST).read_text().splitlines()] == ["img_0001.jpg", "img_0002.jpg"]


def _stage(out: Path, count: int, tag: bytes) -> tuple[list[Path], list[dict[str, str]]]:
    """`count` staged files in the folder's real staging area, and their manifest rows."""
    staging = export.make_staging(out)
    staged = []
    for i in range(count):
        path = staging / f"{tag.decode()}{i}.jpg"
        path.write_bytes(tag + b"%d" % i)
        staged.append(path)
    return staged, [{"file": image_name(i + 1), "query": "q"} for i in range(count)]


def _record_renames(monkeypatch: pytest.MonkeyPatch, fail_on: str | None = None) -> list[str]:
    """Destination names of every os.replace export makes, in order; the one named `fail_on` raises."""
    moved: list[str] = []
    original = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        name = Path(dst).name
        if name == fail_on:
            raise OSError(f"disk fell off while moving {name}")
        original(src, dst)
        moved.append(name)

    monkeypatch.setattr(export.os, "replace", spy)
    return moved


def test_every_image_and_the_report_are_renamed_into_place_before_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Renames keep mtimes, so the order is proven by the renames themselves."""
    out = tmp_path / "set"
    export.prepare_output(out, overwrite=False, owner=export.LOCAL_OWNER)
    staged, rows = _stage(out, 3, b"new")
    moved = _record_renames(monkeypatch)
    export.write_dataset(out, [(s, r["file"]) for s, r in zip(staged, rows)], rows, {"status": "done"})
    assert moved[-1] == export.MANIFEST and moved.count(export.MANIFEST) == 1
    assert set(moved[:-1]) == {export.REPORT, "img_0001.jpg", "img_0002.jpg", "img_0003.jpg"}


def test_an_export_that_crashes_midway_leaves_no_manifest_and_the_next_one_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "set"
    export.prepare_output(out, overwrite=False, owner=export.LOCAL_OWNER)
    staged, rows = _stage(out, 3, b"old")
    with monkeypatch.context() as patch:
        moved = _record_renames(patch, fail_on="img_0003.jpg")
        with pytest.raises(OSError, match="disk fell off"):
            export.write_dataset(out, [(s, r["file"]) for s, r in zip(staged, rows)], rows, {"status": "done"})
    export.remove_staging(out)  # what the runner's `finally` does
    assert not (out / export.MANIFEST).exists()
    assert moved == [export.REPORT, "img_0001.jpg", "img_0002.jpg"]  # it did crash midway

    export.prepare_output(out, overwrite=True, owner=export.LOCAL_OWNER)  # `cvdb build --overwrite`
    staged, rows = _stage(out, 1, b"new")
    export.write_dataset(out, [(s, r["file"]) for s, r in zip(staged, rows)], rows, {"status": "done"})
    export.remove_staging(out)
    assert sorted(os.listdir(out)) == [export.OWNER, "img_0001.jpg", export.MANIFEST, export.REPORT]
    assert (out / "img_0001.jpg").read_bytes() == b"new0"  # the half-written img_0002.jpg is gone
    assert [row["file"] for row in export.manifest_rows(out)] == ["img_0001.jpg"]
    assert json.loads((out / export.REPORT).read_text())["files"] == ["img_0001.jpg"]


def test_failed_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    with pytest.raises(TypeError):
        export.atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
