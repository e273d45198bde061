"""Faults a deployment lives through, on real processes: the whole service (`cvdb serve`) runs
against a Postgres and a redis-server of this module's own, which the tests stop and start.

A job must end `done` (or `failed` with a sentence); it never stays stuck.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from celery import Celery

from common.devkit import corpus
from common.devkit.fake_naver import FakeNaver
from common.devkit.image_server import ImageServer
from common.devkit.scenario import Scenario
from conftest import service_settings
from pg_server import PostgresServer
from redis_server import RedisServer
from service_harness import Service, wait_for

pytestmark = pytest.mark.slow
FINAL = {"done", "failed", "cancelled"}
# How long a server stays away in these tests: a restart as a deployment sees one.
OUTAGE_S = 4.0


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[PostgresServer, RedisServer]]:
    with PostgresServer() as postgres, RedisServer() as broker:
        yield postgres, broker


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory, servers: tuple[PostgresServer, RedisServer],
           tiny_clip: Path, fake_naver: FakeNaver) -> Iterator[Service]:
    postgres, broker = servers
    # Two chunks per job, small GPU batches (an embed lasts long enough to be interrupted) and
    # a GPU step limit short enough to test.
    settings = {**service_settings(tiny_clip, fake_naver), "fetch_chunk_size": 60, "gpu_batch_size": 1,
                "gpu_task_time_limit_s": 20}
    service = Service(tmp_path_factory.mktemp("faults"), settings, database_url=postgres.url, redis_url=broker.url)
    try:
        yield service.start()
    finally:
        service.stop()


def with_slow_urls(scenario: Scenario, image_server: ImageServer, tag: str, seconds: float = 6) -> list[str]:
    """The scenario's pictures with a slow download every 12 URLs, so each chunk takes a while."""
    urls = list(scenario.urls)
    for i in range(0, len(urls), 12):
        urls.insert(i, image_server.url(f"/slow/{seconds}?{tag}={i}"))
    return urls


def log_of(service: Service, job_id: str) -> str:
    return str(service.api("GET", f"/api/jobs/{job_id}/log").json()["log"])


def running_task(service: Service, name: str, node: str) -> dict[str, Any] | None:
    """The task of this name running now on this node (asks that node only, answers at once)."""
    try:
        replies = service.celery.control.inspect(timeout=1.0, destination=[node], limit=1).active() or {}
    except (redis.RedisError, OSError):  # our own client still holds a connection from before a restart
        service.celery.close()
        service.celery = Celery(broker=service.redis_url)
        return None
    return next((t for tasks in replies.values() for t in tasks if t["name"] == name), None)


def gpu_node() -> str:
    return f"gpu@{socket.gethostname()}"


def test_a_postgres_restart_mid_fetch_costs_the_job_nothing(
        faulty: Service, servers: tuple[PostgresServer, RedisServer], scenario: Scenario,
        image_server: ImageServer) -> None:
    postgres, _ = servers
    urls = with_slow_urls(scenario, image_server, "pg")
    job_id = faulty.submit(query=corpus.TARGET, limit=60, source="urls", urls=urls, output="pg-restart")
    wait_for(lambda: faulty.job(job_id)["progress"]["fetched"] > 0, 120, "downloads to start")
    postgres.stop()
    try:
        down = faulty.api("GET", f"/api/jobs/{job_id}")
        assert down.status_code == 503, down.text
        assert "database" in down.json()["detail"].lower()
        time.sleep(OUTAGE_S)  # the outage itself: the workers meet a database that is away
    finally:
        postgres.start()
    job = faulty.wait_status(job_id, FINAL)
    assert job["status"] == "done", job["error"]
    assert job["progress"]["fetched"] == job["progress"]["candidates"] > 0
    log = log_of(faulty, job_id)
    assert log.count("chunk 0: ") == 1 and log.count("chunk 1: ") == 1
    assert "database unavailable" in faulty.log_path.read_text(errors="replace")  # the retry did the work


def test_redis_restarting_empty_loses_no_job(faulty: Service, servers: tuple[PostgresServer, RedisServer],
                                             scenario: Scenario, image_server: ImageServer) -> None:
    _, broker = servers
    busy = faulty.submit(query=corpus.TARGET, limit=60, source="urls",
                         urls=with_slow_urls(scenario, image_server, "redis", seconds=8), output="redis-busy")
    wait_for(lambda: faulty.job(busy)["stage"] == "fetch" and len(
        [t for t in faulty.active_tasks() if t["name"] == "workers.tasks.fetch_chunk"]) == 2,
        120, "both chunks to run, one on each CPU worker")
    waiting = faulty.submit(query=corpus.TARGET, limit=30, output="redis-waiting")  # its message waits
    broker.stop()  # every message in Redis is gone: the waiting search, the running chunks' own
    try:
        # With Redis away, the chunks finish and the last one sends the embed step: it must wait
        # for Redis to come back instead of failing the job.
        wait_for(lambda: faulty.job(busy)["stage"] == "embed", 120, "the fetch to finish while Redis is away")
        time.sleep(OUTAGE_S)
        assert faulty.job(busy)["status"] == "running"
    finally:
        broker.start()
    job = faulty.wait_status(busy, FINAL)
    assert job["status"] == "done", job["error"]
    job = faulty.wait_status(waiting, FINAL, timeout_s=180)
    assert job["status"] == "done", job["error"]
    assert "sending it again" in log_of(faulty, waiting)  # the sweep re-sent the lost queued job


def _interrupt_embed(service: Service, sig: signal.Signals) -> tuple[str, int]:
    """Submit a job and send `sig` to the GPU pool process while it embeds that job."""
    job_id = service.submit(query=corpus.TARGET, limit=40, output=f"gpu-{sig.name.lower()}")
    node = gpu_node()
    task = wait_for(lambda: running_task(service, "workers.tasks.embed", node), 300, "the embed step to run",
                    interval_s=0.02)
    pid = int(task["worker_pid"])
    os.kill(pid, sig)
    assert service.job(job_id)["stage"] == "embed"
    return job_id, pid


def test_the_gpu_worker_killed_mid_embed_costs_the_job_nothing(faulty: Service) -> None:
    job_id, pid = _interrupt_embed(faulty, signal.SIGKILL)
    job = faulty.wait_status(job_id, FINAL, timeout_s=180)
    assert job["status"] == "done", job["error"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_hung_embed_is_stopped_at_its_time_limit_and_sent_again(faulty: Service) -> None:
    job_id, pid = _interrupt_embed(faulty, signal.SIGSTOP)  # frozen: as hung as a process can be
    try:
        job = faulty.wait_status(job_id, FINAL, timeout_s=180)
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGCONT)
    assert job["status"] == "done", job["error"]
    assert "sending it again" in log_of(faulty, job_id)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _cpu_worker_processes() -> list[psutil.Process]:
    """Every process of every CPU worker: main processes and their pool children."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "worker" in cmdline and "cpu" in cmdline and "-Q" in cmdline:
            found.append(process)
    return found


def _fresh_cpu_workers(service: Service, old: set[int]) -> bool:
    try:
        pids = {p.pid for p in _cpu_worker_processes() if p.status() != psutil.STATUS_ZOMBIE}
    except psutil.Error:  # one ended while we looked
        return False
    return len(pids) >= service.cpu_workers and pids.isdisjoint(old)


def test_a_cancel_sent_while_no_cpu_worker_is_up_still_cancels(faulty: Service) -> None:
    stopped = _cpu_worker_processes()
    assert len(stopped) >= faulty.cpu_workers
    for process in stopped:
        process.send_signal(signal.SIGSTOP)  # no CPU worker can take the job or hear the revoke
    try:
        job_id = faulty.submit(query=corpus.TARGET, limit=20, output="cancel-no-worker")
        assert faulty.api("POST", f"/api/jobs/{job_id}/cancel").status_code == 202
    finally:
        for process in stopped:
            process.kill()  # gone for good; `cvdb serve` starts fresh ones
    wait_for(lambda: _fresh_cpu_workers(faulty, {p.pid for p in stopped}), 60, "fresh CPU workers")
    job = faulty.wait_status(job_id, FINAL, timeout_s=120)
    assert job["status"] == "cancelled"
    assert "searching" not in log_of(faulty, job_id)
    assert not (faulty.data_root / "cancel-no-worker").exists()
