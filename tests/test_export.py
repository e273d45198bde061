"""Output folder rules and atomic, manifest-last dataset writing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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


def test_dataset_is_written_with_the_manifest_last(tmp_path: Path) -> None:
    out = tmp_path / "set"
    export.prepare_output(out, overwrite=False, owner=export.LOCAL_OWNER)
    staged = []
    for i in range(2):
        path = tmp_path / f"s{i}.jpg"
        path.write_bytes(b"jpeg%d" % i)
        staged.append(path)
    rows = [{"file": export.file_name(i + 1), "query": "q"} for i in range(2)]
    export.write_dataset(out, staged, rows, {"status": "done"})
    names = sorted(os.listdir(out))
    assert names == [export.OWNER, "img_0001.jpg", "img_0002.jpg", "manifest.jsonl", "report.json"]
    assert [json.loads(line)["file"] for line in (out / export.MANIFEST).read_text().splitlines()] == ["img_0001.jpg", "img_0002.jpg"]
    manifest_time = (out / export.MANIFEST).stat().st_mtime_ns
    assert all((out / n).stat().st_mtime_ns <= manifest_time for n in names)


def test_failed_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    with pytest.raises(TypeError):
        export.atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
