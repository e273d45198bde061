"""The whole service as real processes for tests: `cvdb serve` against a throwaway Postgres
database, its own Redis db number, a temporary data folder, the fake Naver and the tiny CLIP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import redis
import requests
from celery import Celery
from sqlalchemy.engine import make_url

from common.config import Settings

CVDB = str(Path(sys.executable).parent / "cvdb")
SERVER_URL = make_url(os.environ.get("CVDB_DATABASE_URL", Settings().database_url))
REDIS_SERVER = os.environ.get("CVDB_TEST_REDIS", "redis://127.0.0.1:6379")


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll until `condition()` is truthy; fail the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _admin() -> psycopg2.extensions.connection:
    conn = psycopg2.connect(host=SERVER_URL.host, port=SERVER_URL.port or 5432, user=SERVER_URL.username,
                            password=SERVER_URL.password, dbname="postgres", connect_timeout=3)
    conn.autocommit = True
    return conn


def create_database() -> str:
    name = f"cvdb_test_{uuid.uuid4().hex[:12]}"
    conn = _admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return SERVER_URL.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    name = make_url(url).database
    conn = _admin()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        conn.close()


def free_redis_db() -> str:
    """A Redis db number no other test run is using (an empty one), as a URL."""
    for number in range(15, 1, -1):
        url = f"{REDIS_SERVER}/{number}"
        client = redis.Redis.from_url(url)
        if client.dbsize() == 0 and client.set("cvdb-test-lock", "1", nx=True):
            return url
    raise RuntimeError("no empty Redis db between 2 and 15 for the tests")


class Service:
    """`cvdb serve` with N CPU workers, the GPU worker, beat and Flower, stopped by `stop()`."""

    def __init__(self, root: Path, settings: dict[str, object], cpu_workers: int = 2,
                 database_url: str | None = None, redis_url: str | None = None) -> None:
        """`database_url`/`redis_url`: servers of the test's own (fault tests restart them);
        by default a new database on the shared server and a free db number of the shared Redis."""
        self.root, self.cpu_workers = root, cpu_workers
        self.data_root = root / "data"
        self.port, self.flower_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.flower_auth = ("admin", uuid.uuid4().hex[:12])
        self.own_servers = database_url is not None
        self.database_url = database_url or create_database()
        self.redis_url = redis_url or free_redis_db()
        values = {**settings, "data_root": self.data_root, "database_url": self.database_url,
                  "redis_url": self.redis_url}
        self.env = {**os.environ, **{f"CVDB_{k.upper()}": str(v) for k, v in values.items()},
                    "FLOWER_BASIC_AUTH": ":".join(self.flower_auth)}
        self.log_path = root / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.celery = Celery(broker=self.redis_url)

    def start(self) -> Service:
        self.data_root.mkdir(parents=True, exist_ok=True)
        args = [CVDB, "serve", "--cpu-workers", str(self.cpu_workers), "--concurrency", "1",
                "--port", str(self.port), "--flower-port", str(self.flower_port)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(args, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_for(self._healthy, 120, f"the API to answer /healthz (log: {self.log_path})")
        wait_for(lambda: self.nodes() >= self.expected_nodes, 180, f"workers {self.expected_nodes} (log: {self.log_path})",
                 interval_s=1.0)
        return self

    @property
    def expected_nodes(self) -> set[str]:
        host = socket.gethostname()
        return {f"cpu-{i}@{host}" for i in range(1, self.cpu_workers + 1)} | {f"gpu@{host}"}

    def nodes(self) -> set[str]:
        assert self.process is not None and self.process.poll() is None, self.log_tail()
        replies = self.celery.control.ping(timeout=1.0) or []
        return {name for reply in replies for name in reply}

    def _healthy(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log_tail()
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.celery.close()
        if not self.own_servers:
            redis.Redis.from_url(self.redis_url).flushdb()
            drop_database(self.database_url)

    # -- the API ------------------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", timeout=30, **kwargs)

    def submit(self, **body: Any) -> str:
        response = self.api("POST", "/api/jobs", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_status(self, job_id: str, statuses: set[str], timeout_s: float = 300) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        return dict(wait_for(reached, timeout_s, f"job {job_id} to be {statuses} (log: {self.log_path})", 0.3))

    def active_tasks(self) -> list[dict[str, Any]]:
        """Tasks running now on every worker, each with its node and worker_pid."""
        replies = self.celery.control.inspect(timeout=1.0).active() or {}
        return [{**task, "node": node} for node, tasks in replies.items() for task in tasks]

    def worker_pid(self, node_prefix: str) -> int:
        """The main process of a worker, found by its node name on the command line."""
        import psutil

        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if "worker" in cmdline and f"{node_prefix}@%h" in cmdline:
                return int(process.pid)
        raise AssertionError(f"no worker process named {node_prefix}")
