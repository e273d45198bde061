"""`cvdb serve`: the service's processes on one machine, without Docker (the compose topology).

Runs the migration once, then the API, N CPU workers, the GPU worker, beat and Flower, each
in its own process group with its output prefixed by its name; a process that dies is started
again. Ctrl-C or SIGTERM stops them all: SIGTERM first (Celery finishes or requeues its tasks),
SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import psycopg2
from psycopg2 import sql
import redis
from sqlalchemy.engine import URL, make_url

from common import topology
from common.config import Settings

STOP_GRACE_S = 20.0
RESTART_PAUSE_S, MAX_RESTART_PAUSE_S, STEADY_S = 1.0, 30.0, 60.0
COLOURS = ("36", "33", "35", "32", "34", "31")


class ServeError(Exception):
    """Something the service needs is missing; the message says how to start it."""


@dataclass(frozen=True)
class Process:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the launcher's own environment


def api_environment(bind: str) -> dict[str, str]:
    """The API answers to the address it binds as well as to localhost (`--host 192.168.1.5` is
    reached as http://192.168.1.5:8000/), unless CVDB_ALLOWED_HOSTS says otherwise."""
    host = bind.rpartition(":")[0].strip("[]")
    if os.environ.get("CVDB_ALLOWED_HOSTS", "").strip() or not host:
        return {}
    return {"CVDB_ALLOWED_HOSTS": f"{Settings.model_fields['allowed_hosts'].default},{host}"}


def plan(cpu_workers: int, concurrency: int, bind: str, flower: bool, beat: bool,
         flower_port: int = topology.FLOWER_PORT) -> list[Process]:
    """The same processes as compose.yaml; node names are numbered as replicas share one host here."""
    processes = [Process("api", topology.api(bind), api_environment(bind))]
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


def _spawn(process: Process, label: str, out: TextIO, lock: threading.Lock) -> subprocess.Popen[str]:
    child = subprocess.Popen(resolve(process.argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, bufsize=1, env=os.environ.copy())
    threading.Thread(target=_pump, args=(child, label, out, lock), daemon=True).start()
    return child


def run(processes: list[Process], out: TextIO = sys.stdout) -> int:
    """Start everything and keep it running until we are told to stop, then stop it all.

    A process that dies (a worker killed, beat losing Redis) is started again, after a pause
    that doubles while it keeps dying (1 s up to 30 s), as compose's restart policy does."""
    lock = threading.Lock()
    width = max(len(p.name) for p in processes)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    labels = {p.name: p.name.ljust(width) for p in processes}
    if out.isatty():
        labels = {name: f"\033[{COLOURS[i % len(COLOURS)]}m{label}\033[0m"
                  for i, (name, label) in enumerate(labels.items())}
    running = {p.name: _spawn(p, labels[p.name], out, lock) for p in processes}
    started = {p.name: time.monotonic() for p in processes}
    pause = {p.name: RESTART_PAUSE_S for p in processes}
    restart_at: dict[str, float] = {}
    while not stop.is_set():
        for process in processes:
            child = running[process.name]
            if child.poll() is None:
                continue
            if process.name not in restart_at:
                if time.monotonic() - started[process.name] > STEADY_S:  # it had been running well
                    pause[process.name] = RESTART_PAUSE_S
                with lock:
                    out.write(f"{process.name} exited with code {child.returncode}; "
                              f"starting it again in {pause[process.name]:.0f} s\n")
                restart_at[process.name] = time.monotonic() + pause[process.name]
                pause[process.name] = min(pause[process.name] * 2, MAX_RESTART_PAUSE_S)
            elif time.monotonic() >= restart_at[process.name]:
                del restart_at[process.name]
                running[process.name] = _spawn(process, labels[process.name], out, lock)
                started[process.name] = time.monotonic()
        stop.wait(0.5)
    shutdown(list(running.values()))
    return 0


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
