"""`cvdb serve`'s plan and command resolution (the processes themselves run in test_service)."""

from __future__ import annotations

import sys
from pathlib import Path

from common import serve, topology


def test_plan_is_the_compose_topology_with_numbered_cpu_workers() -> None:
    processes = serve.plan(cpu_workers=3, concurrency=2, bind="127.0.0.1:9000", flower=True, beat=True,
                           flower_port=5600)
    assert [p.name for p in processes] == ["api", "cpu-1", "cpu-2", "cpu-3", "gpu", "beat", "flower"]
    assert processes[0].argv == topology.api("127.0.0.1:9000")
    assert processes[2].argv == topology.cpu_worker("cpu-2", 2)
    assert processes[-1].argv == topology.flower(5600)
    assert [p.name for p in serve.plan(1, 1, "127.0.0.1:9000", flower=False, beat=False)] == ["api", "cpu-1", "gpu"]


def test_commands_run_from_this_environment_even_when_it_is_not_activated() -> None:
    resolved = serve.resolve(topology.gpu_worker())
    assert resolved[0] == str(Path(sys.executable).parent / "celery")
    assert resolved[1:] == topology.gpu_worker()[1:]
    assert serve.resolve(["no-such-program-xyz", "--flag"]) == ["no-such-program-xyz", "--flag"]


def test_preflight_creates_a_missing_database_and_data_folder_and_names_a_missing_redis(tmp_path: Path) -> None:
    import io
    import uuid

    import pytest
    from sqlalchemy.engine import make_url

    from common.config import Settings
    from service_harness import SERVER_URL, drop_database

    url = SERVER_URL.set(database=f"cvdb_test_{uuid.uuid4().hex[:12]}").render_as_string(hide_password=False)
    out, data_root = io.StringIO(), tmp_path / "new" / "data"
    try:
        serve.preflight(Settings(database_url=url, data_root=data_root), out)
        assert f"created the database {make_url(url).database}" in out.getvalue() and data_root.is_dir()
        serve.preflight(Settings(database_url=url), out)  # the second start finds it
        assert out.getvalue().count("created") == 1
        with pytest.raises(serve.ServeError, match="cannot reach Redis at redis://127.0.0.1:1/0"):
            serve.preflight(Settings(database_url=url, redis_url="redis://127.0.0.1:1/0"), out)
    finally:
        drop_database(url)


def test_demo_mode_points_the_service_at_a_local_fake_naver_and_the_tiny_model(
        tiny_clip: Path, monkeypatch: "pytest.MonkeyPatch") -> None:
    import os

    import pytest  # noqa: F401

    from common.cli import _demo_environment
    from common.config import Settings
    from common.devkit.demo import QUERY
    from common.pipeline.sources import search

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the demo keeps its model under .cache/cvdb
    monkeypatch.setattr(os, "environ", dict(os.environ))  # what the children inherit; restored after
    with _demo_environment():
        settings = Settings()
        assert Path(settings.model) == tiny_clip and settings.allow_private_addresses
        assert settings.naver_search_url.startswith("http://127.0.0.1:")
        found = search(QUERY, 20, settings)
        assert found.served_by == "naver" and len(found.candidates) == 20
