"""A job's folder belongs to that job: the owner marker, removing only what the tool wrote, no
symlinks followed, only img_NNNN.jpg files served, and one claim per folder under concurrency.

The export rules run on tmp folders; the API cases run through the real app against a throwaway
Postgres and Redis db; the race runs over a real threaded HTTP server.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import flask_migrate
import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.serving import make_server

from api import create_app
from api import jobs as api_jobs
from common.config import Settings
from common.db import db
from common.models import FINAL_STATUSES, JOB_STATUSES, Job
from common.names import image_name
from common.pipeline import export, staging
from service_harness import create_database, drop_database, free_redis_db
from workers import jobstate

# -- the export rules on tmp folders ---------------------------------------------------------------


def write_set(folder: Path, owner: str, count: int = 2, overwrite: bool = False) -> list[str]:
    """A dataset as the tool writes one: claim, stage, write, drop the staging folder."""
    export.prepare_output(folder, overwrite=overwrite, owner=owner)
    scratch = export.make_staging(folder)
    staged = []
    for i in range(count):
        path = scratch / f"s{i}.jpg"
        path.write_bytes(b"\xff\xd8jpeg%d" % i)
        staged.append(path)
    rows = [{"file": image_name(i + 1), "query": "q"} for i in range(count)]
    export.write_dataset(folder, [(s, r["file"]) for s, r in zip(staged, rows)], rows, {"status": "done"})
    export.remove_staging(folder)
    return [r["file"] for r in rows]


def write_classes(folder: Path, owner: str, overwrite: bool = False) -> list[str]:
    """A dataset of classes with splits: nested image paths, classes.json."""
    export.prepare_output(folder, overwrite=overwrite, owner=owner)
    scratch = export.make_staging(folder)
    names = ["train/cat/img_0001.jpg", "train/dog/img_0001.jpg", "val/cat/img_0001.jpg"]
    files = []
    for i, name in enumerate(names):
        (scratch / f"s{i}.jpg").write_bytes(b"\xff\xd8jpeg%d" % i)
        files.append((scratch / f"s{i}.jpg", name))
    rows = [{"file": name, "label": name.split("/")[1]} for name in names]
    export.write_dataset(folder, files, rows, {"status": "done"}, {export.CLASSES: b"[]"})
    export.remove_staging(folder)
    return names


def test_a_dataset_of_classes_is_ours_and_goes_whole_leaving_only_a_users_files(tmp_path: Path) -> None:
    out = tmp_path / "set"
    names = write_classes(out, "job-a")
    assert all(export.is_image(out, n) for n in names) and export.foreign_files(out) == []
    (out / "train" / "cat" / "my-notes.txt").write_text("mine")
    assert export.foreign_files(out) == ["train/cat/my-notes.txt"]
    assert export.remove_dataset(out, "job-a")
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert left == ["train", "train/cat", "train/cat/my-notes.txt"]  # the user's file and its folders stay


def test_nothing_is_served_or_removed_through_a_symlinked_class_folder(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "set", tmp_path / "elsewhere"
    write_classes(out, "job-a")
    elsewhere.mkdir()
    (elsewhere / "img_0001.jpg").write_bytes(b"precious")
    (out / "val" / "cat" / "img_0001.jpg").unlink()
    (out / "val" / "cat").rmdir()
    (out / "val" / "cat").symlink_to(elsewhere)
    assert not export.is_image(out, "val/cat/img_0001.jpg")
    assert not export.is_image(out, "../elsewhere/img_0001.jpg") and not export.is_image(out, "train/../x.jpg")
    assert export.foreign_files(out) == ["val"]  # it holds only a link now: not ours
    export.remove_dataset(out, "job-a")
    assert (elsewhere / "img_0001.jpg").read_bytes() == b"precious"


def test_the_claim_is_written_and_read_back(tmp_path: Path) -> None:
    out = tmp_path / "set"
    assert export.owner_of(out) is None
    export.prepare_output(out, overwrite=False, owner="job-a")
    assert export.owner_of(out) == "job-a"
    export.prepare_output(out, overwrite=False, owner="job-a")  # the same owner again (a redelivered step)
    with pytest.raises(export.OutputError, match="belongs to service job job-a"):
        export.prepare_output(out, overwrite=True, owner=export.LOCAL_OWNER)


def test_overwrite_removes_only_the_previous_datasets_files(tmp_path: Path) -> None:
    out = tmp_path / "set"
    write_set(out, export.LOCAL_OWNER, count=3)
    write_set(out, export.LOCAL_OWNER, count=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [export.OWNER, "img_0001.jpg", "manifest.jsonl", "report.json"]


def test_overwrite_never_touches_a_users_img_file(tmp_path: Path) -> None:
    out = tmp_path / "set"
    write_set(out, export.LOCAL_OWNER)
    (out / "img_holiday.jpg").write_bytes(b"beach")
    (out / "img_0099.jpg").write_bytes(b"mine too")  # looks like ours, but no file of the tool names it
    with pytest.raises(export.OutputError, match="did not write.*img_0099.jpg, img_holiday.jpg"):
        export.prepare_output(out, overwrite=True, owner=export.LOCAL_OWNER)
    assert (out / "img_holiday.jpg").read_bytes() == b"beach" and (out / "img_0099.jpg").exists()
    assert (out / "img_0001.jpg").exists() and (out / export.MANIFEST).exists()


def test_an_interrupted_export_is_named_by_the_report(tmp_path: Path) -> None:
    out = tmp_path / "set"
    names = write_set(out, export.LOCAL_OWNER)
    (out / export.MANIFEST).unlink()  # as if the run had died before its manifest
    assert json.loads((out / export.REPORT).read_text())["files"] == names
    export.prepare_output(out, overwrite=False, owner=export.LOCAL_OWNER)
    assert sorted(p.name for p in out.iterdir()) == [export.OWNER]


def test_remove_dataset_removes_what_the_owner_wrote_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "set"
    write_set(out, "job-a")
    (tmp_path / "secret.txt").write_text("outside")
    with (out / export.MANIFEST).open("a") as manifest:  # rows naming files outside the folder
        manifest.write('{"file": "../secret.txt"}\n{"file": "../../../../etc/hostname"}\n')
    (out / "notes.txt").write_text("mine")
    assert export.remove_dataset(out, "job-b") is False  # not its folder: nothing touched
    assert (out / "img_0001.jpg").exists()
    assert export.remove_dataset(out, "job-a") is True
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (tmp_path / "secret.txt").read_text() == "outside"
    (out / "notes.txt").unlink()
    write_set(out, "job-a")
    export.remove_dataset(out, "job-a")
    assert not out.exists()  # nothing else there: the folder goes too


def test_release_gives_up_a_folder_holding_only_the_marker(tmp_path: Path) -> None:
    out = tmp_path / "set"
    export.prepare_output(out, overwrite=False, owner="job-a")
    export.release(out, "job-b")
    assert out.exists()
    export.release(out, "job-a")
    assert not out.exists()
    export.prepare_output(out, overwrite=False, owner="job-a")
    (out / export.REPORT).write_text("{}")  # a failure report explains the run: it stays
    export.release(out, "job-a")
    assert export.owner_of(out) == "job-a"


def outside_with_files(tmp_path: Path) -> Path:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not yours")
    return elsewhere


def test_a_symlinked_staging_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = outside_with_files(tmp_path)
    out = tmp_path / "set"
    out.mkdir()
    (out / export.STAGING).symlink_to(elsewhere, target_is_directory=True)
    for attempt in (lambda: export.make_staging(out),
                    lambda: export.prepare_output(out, overwrite=True, owner=export.LOCAL_OWNER)):
        with pytest.raises(export.OutputError, match="symbolic link"):
            attempt()
    (out / export.OWNER).write_text("job-a\n")
    with pytest.raises(export.OutputError, match="symbolic link"):
        export.remove_dataset(out, "job-a")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


def test_a_symlinked_output_folder_or_marker_is_refused(tmp_path: Path) -> None:
    elsewhere = outside_with_files(tmp_path)
    (elsewhere / export.OWNER).write_text("job-a\n")
    linked = tmp_path / "linked"
    linked.symlink_to(elsewhere, target_is_directory=True)
    for attempt in (lambda: export.prepare_output(linked, overwrite=True, owner="job-a"),
                    lambda: export.make_staging(linked), lambda: export.remove_dataset(linked, "job-a")):
        with pytest.raises(export.OutputError, match="symbolic link"):
            attempt()
    out = tmp_path / "set"
    out.mkdir()
    (out / export.OWNER).symlink_to(elsewhere / export.OWNER)
    with pytest.raises(export.OutputError, match="symbolic link"):
        export.prepare_output(out, overwrite=False, owner="job-a")
    assert sorted(p.name for p in elsewhere.iterdir()) == [export.OWNER, "keep.txt"]


def test_the_workers_staging_folder_is_never_a_symlink(tmp_path: Path) -> None:
    elsewhere = outside_with_files(tmp_path)
    settings = Settings(data_root=tmp_path / "data")
    job = Job(id="job-a", out_dir="set")
    assert jobstate.staging_dir(job, settings) == (tmp_path / "data" / "set" / export.STAGING).resolve()
    export.remove_staging(tmp_path / "data" / "set")
    (tmp_path / "data" / "set" / export.STAGING).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(jobstate.JobError, match="symbolic link"):
        jobstate.staging_dir(job, settings)
    with pytest.raises(export.OutputError, match="symbolic link"):  # select never moves files in through it
        staging.load(tmp_path / "data" / "set" / export.STAGING, "0" * 64, "https://img.example/a.jpg")


# -- the API, through the app ----------------------------------------------------------------------


def make_app(tmp: Path, database_url: str, redis_url: str) -> Flask:
    config = Settings(data_root=tmp / "data", redis_url=redis_url, database_url=database_url)
    return create_app({"CVDB_SETTINGS": config, "SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True})


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    tmp, database_url, redis_url = tmp_path_factory.mktemp("owner"), create_database(), free_redis_db()
    app = make_app(tmp, database_url, redis_url)
    try:
        with app.app_context():
            flask_migrate.upgrade()
        yield app
    finally:
        with app.app_context():
            db.engine.dispose()
        redis.Redis.from_url(redis_url).flushdb()
        drop_database(database_url)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def data_root(app: Flask) -> Path:
    return Path(app.config["CVDB_SETTINGS"].data_root)


def job_row(app: Flask, output: str, status: str = "done") -> str:
    with app.app_context():
        job = Job(query="cat", request_limit=5, out_dir=output, source="naver", status=status, options={},
                  log="", task_ids=[])
        db.session.add(job)
        db.session.commit()
        return job.id


def submit(client: FlaskClient, output: str) -> str:
    response = client.post("/api/jobs", json={"query": "cat", "output": output, "source": "urls",
                                              "urls": ["https://img.example/cat.jpg"]})
    assert response.status_code == 202, response.data
    return str(response.get_json()["id"])


def set_status(app: Flask, job_id: str, status: str) -> None:
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert job is not None
        job.status = status
        db.session.commit()


def test_deleting_a_failed_job_leaves_the_dataset_of_the_job_that_reused_its_name(app: Flask,
                                                                                   client: FlaskClient) -> None:
    from workers import stages  # the real search step claims the folder

    folder = data_root(app) / "reused"
    first = submit(client, "reused")
    with app.app_context():
        stages.run_search(first)
        assert export.owner_of(folder) == first
        assert jobstate.fail(first, "the source answered 503")
    assert not folder.exists()  # it had written nothing but its claim: the name is free again
    second = submit(client, "reused")
    with app.app_context():
        stages.run_search(second)
    names = write_set(folder, second)
    set_status(app, second, "done")
    assert client.delete(f"/api/jobs/{first}").status_code == 204
    assert all((folder / name).is_file() for name in [*names, export.MANIFEST, export.REPORT])
    assert client.get(f"/api/jobs/{second}/images").get_json()["count"] == len(names)
    assert client.delete(f"/api/jobs/{second}").status_code == 204
    assert not folder.exists()


def test_a_users_file_survives_deleting_the_job(app: Flask, client: FlaskClient) -> None:
    job_id = job_row(app, "with-notes")
    folder = data_root(app) / "with-notes"
    write_set(folder, job_id)
    (folder / "notes.txt").write_text("mine")
    (folder / "img_holiday.jpg").write_bytes(b"beach")
    assert client.delete(f"/api/jobs/{job_id}").status_code == 204
    assert sorted(p.name for p in folder.iterdir()) == ["img_holiday.jpg", "notes.txt"]


@pytest.mark.parametrize("inside", [False, True], ids=["outside-the-data-folder", "to-another-folder"])
def test_a_folder_replaced_by_a_symlink_is_a_conflict_and_nothing_is_deleted(
        app: Flask, client: FlaskClient, tmp_path: Path, inside: bool) -> None:
    name = f"linked-{inside}"
    job_id = job_row(app, name)
    target = data_root(app) / f"target-{inside}" if inside else tmp_path / "elsewhere"
    write_set(target, job_id)  # even a folder claimed by this very job is not deleted through a link
    (data_root(app) / name).symlink_to(target, target_is_directory=True)
    for method, path in (("DELETE", ""), ("GET", "/archive"), ("GET", "/images"), ("GET", "/images/img_0001.jpg")):
        response = client.open(f"/api/jobs/{job_id}{path}", method=method)
        assert response.status_code == 409, (method, path, response.data)
        assert "symbolic link" in response.get_json()["detail"]
    assert client.get(f"/api/jobs/{job_id}").status_code == 200  # the job is still there
    assert sorted(p.name for p in target.iterdir()) == [export.OWNER, "img_0001.jpg", "img_0002.jpg",
                                                         "manifest.jsonl", "report.json"]


def test_a_symlinked_staging_folder_stops_a_delete(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    job_id = job_row(app, "staging-link")
    folder = data_root(app) / "staging-link"
    write_set(folder, job_id)
    elsewhere = outside_with_files(tmp_path)
    (folder / export.STAGING).symlink_to(elsewhere, target_is_directory=True)
    response = client.delete(f"/api/jobs/{job_id}")
    assert response.status_code == 409 and "symbolic link" in response.get_json()["detail"]
    assert (elsewhere / "keep.txt").exists() and (folder / export.MANIFEST).exists()


def test_only_the_folders_own_images_are_served(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    job_id = job_row(app, "hostile-manifest")
    folder = data_root(app) / "hostile-manifest"
    write_set(folder, job_id, count=1)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (folder / "img_0002.jpg").symlink_to(secret)
    with (folder / export.MANIFEST).open("a") as manifest:
        for name in ("../../../../etc/hostname", str(secret), "img_0002.jpg", "report.json"):
            manifest.write(json.dumps({"file": name}) + "\n")
        manifest.write('["not a row"]\n{"no": "file"}\n')
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job_id}/archive").data))
    prefix = "hostile-manifest/"
    assert archive.namelist() == [f"{prefix}img_0001.jpg", f"{prefix}report.json", f"{prefix}manifest.jsonl"]
    images = client.get(f"/api/jobs/{job_id}/images").get_json()
    assert [i["file"] for i in images["images"]] == ["img_0001.jpg"]
    assert client.get(f"/api/jobs/{job_id}/images/img_0002.jpg").status_code == 404
    assert client.delete(f"/api/jobs/{job_id}").status_code == 204
    assert secret.read_text() == "do not serve"


@pytest.mark.parametrize("status", JOB_STATUSES)
def test_only_an_unfinished_job_holds_its_folder_name(app: Flask, status: str) -> None:
    job_row(app, f"held-{status}", status)
    blocked = status not in FINAL_STATUSES
    with app.app_context(), (pytest.raises(IntegrityError, match="ix_jobs_out_dir_active") if blocked
                             else contextlib.nullcontext()):
        db.session.add(Job(query="cat", request_limit=5, out_dir=f"held-{status}", source="naver", status="queued",
                           options={}, log="", task_ids=[]))
        db.session.commit()


def test_eight_simultaneous_submissions_of_one_folder_accept_exactly_one(app: Flask,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    checked = threading.Barrier(8, timeout=20)

    def check_then_wait(output: str) -> None:
        # Every request passes the folder check before any inserts: the window a real race has,
        # made certain rather than left to the scheduler.
        check_output_free(output)
        checked.wait()

    check_output_free = api_jobs._check_output_free
    monkeypatch.setattr(api_jobs, "_check_output_free", check_then_wait)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{server.server_port}/api/jobs"
    barrier, answers = threading.Barrier(8), []
    lock = threading.Lock()

    def post() -> None:
        barrier.wait()
        response = requests.post(url, json={"query": "cat", "output": "raced"}, timeout=30)
        with lock:
            answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=post) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        server.shutdown()
    assert sorted(code for code, _ in answers) == [202] + [409] * 7, answers
    assert all(body["error"] == "conflict" and body["detail"] for code, body in answers if code == 409)
    with app.app_context():
        assert db.session.scalar(select(func.count()).where(Job.out_dir == "raced")) == 1


def test_signed_links_cover_class_folders_and_nothing_that_climbs_out() -> None:
    from api import signing

    base = "/api/jobs/0b7f0c2e-2f43-4d6c-9a51-3f0c1d2e4a5b/images"
    assert signing.SIGNABLE.match(f"{base}/img_0001.jpg") and signing.SIGNABLE.match(f"{base}/train/red-panda/img_0001.jpg")
    for path in (f"{base}/../img_0001.jpg", f"{base}/train/../../img_0001.jpg", f"{base}/.hidden/img_0001.jpg",
                 f"{base}/a/b/c/d/img_0001.jpg", f"{base}/train/notes.txt"):
        assert not signing.SIGNABLE.match(path), path
