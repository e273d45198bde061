"""`cvdb serve`: the service's processes on one machine, without Docker (the compose topology).

Runs the migration once, then the API, N CPU workers, the GPU worker, beat and Flower, each
in its own process group with its output prefixed by its name. Ctrl-C or SIGTERM stops them
all: SIGTERM first (Celery finishes or requeues its tasks), SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psycopg2
from psycopg2 import sql
import redis
from sqlalchemy.engine import URL, make_url

from common import topology
from common.config import Settings

STOP_GRACE_S = 20.0
COLOURS = ("36", "33", "35", "32", "34", "31")


class ServeError(Exception):
    """Something the service needs is missing; the message says how to start it."""


@dataclass(frozen=True)
class Process:
    name: str
    argv: list[str]


def plan(cpu_workers: int, concurrency: int, bind: str, flower: bool, beat: bool,
         flower_port: int = topology.FLOWER_PORT) -> list[Process]:
    """The same processes as compose.yaml; node names are numbered as replicas share one host here."""
    processes = [Process("api", topology.api(bind))]
    processes += [Process(f"cpu-{i}", topology.cpu_worker(f"cpu-{i}", concurrency)) for i in range(1, cpu_workers + 1)]
    processes.append(Process("gpu", topology.gpu_worker()))
    if beat:
        processes.append(Process("beat", topology.beat()))
    if flower:
        processes.append(Process("flower", topology.flower(flower_port)))
    return processes


def _connect(url: URL, database: str | None = None) -> psycopg2.extensions.connection:
    return psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                            dbname=database or url.database, connect_timeout=3)


def _create_database(url: URL, out: TextIO) -> None:
    """A reachable server without the service's database gets it created (the first start)."""
    conn = _connect(url, "postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
    finally:
        conn.close()
    out.write(f"created the database {url.database}\n")


def preflight(settings: Settings, out: TextIO = sys.stdout) -> None:
    """Fail early, with the command to fix it, when Postgres or Redis is not there."""
    settings.data_root.mkdir(parents=True, exist_ok=True)  # datasets and beat's schedule go there
    url = make_url(settings.database_url)
    try:
        try:
            _connect(url).close()
        except psycopg2.OperationalError as exc:
            if f'database "{url.database}" does not exist' not in str(exc):
                raise
            _create_database(url, out)
    except psycopg2.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise ServeError(f"cannot reach Postgres at {url.host}:{url.port or 5432}/{url.database} ({first}). "
                         "Start it (e.g. `pg_ctlcluster 15 main start`), create the database "
                         f"(`createdb -h {url.host} -U {url.username} {url.database}`) or set CVDB_DATABASE_URL.") from None
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        raise ServeError(f"cannot reach Redis at {settings.redis_url} ({exc}). Start it "
                         "(e.g. `redis-server --daemonize yes`) or set CVDB_REDIS_URL.") from None


def resolve(argv: list[str]) -> list[str]:
    """Run flask, celery and gunicorn from this Python's environment, activated or not."""
    local = Path(sys.executable).parent / argv[0]
    return [str(local), *argv[1:]] if local.is_file() else argv


def migrate(out: TextIO) -> None:
    result = subprocess.run(resolve(topology.MIGRATE), capture_output=True, text=True)
    if result.returncode != 0:
        raise ServeError(f"database migration failed:\n{result.stderr.strip()[-2000:]}")
    out.write("migrate | database schema is up to date\n")


def _pump(process: subprocess.Popen[str], label: str, out: TextIO, lock: threading.Lock) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        with lock:
            out.write(f"{label} | {line}")
            out.flush()


def run(processes: list[Process], out: TextIO = sys.stdout) -> int:
    """Start everything; return when one process dies or we are told to stop; stop the rest."""
    lock, running = threading.Lock(), []
    width = max(len(p.name) for p in processes)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for index, process in enumerate(processes):
        child = subprocess.Popen(resolve(process.argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True, bufsize=1, env=os.environ.copy())
        label = process.name.ljust(width)
        if out.isatty():
            label = f"\033[{COLOURS[index % len(COLOURS)]}m{label}\033[0m"
        threading.Thread(target=_pump, args=(child, label, out, lock), daemon=True).start()
        running.append((process, child))
    code = 0
    while not stop.is_set():
        dead = [(p, c) for p, c in running if c.poll() is not None]
        if dead:
            process, child = dead[0]
            out.write(f"{process.name} exited with code {child.returncode}; stopping the others\n")
            code = child.returncode or 1
            break
        stop.wait(0.5)
    shutdown([c for _, c in running])
    return code


def shutdown(children: list[subprocess.Popen[str]], grace_s: float = STOP_GRACE_S) -> None:
    for child in children:
        _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(child, signal.SIGKILL)
            child.wait()


def _signal_group(child: subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:
        pass
