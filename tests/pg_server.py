"""A private PostgreSQL server for fault tests: its own folder, port and socket, stopped and
started at will (the shared server on 5432 is never touched).

    with PostgresServer() as server:     # initdb, start, create the database
        url = server.url                 # postgresql+psycopg2://postgres@127.0.0.1:<port>/cvdb
        server.stop()                    # clients now get connection refused
        server.start()                   # same port, same data

Run as root, the server's programs run as the `postgres` user (`runuser -u postgres --`), which
owns the folder; PostgreSQL refuses to run as root. A `base` folder the postgres user cannot reach
(pytest's tmp_path lies under a 0700 folder of root's) is replaced by the system's temp folder;
close() removes the server's folder either way.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg2
from psycopg2 import sql

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
START_ATTEMPTS = 3  # a free port can be taken between finding it and binding it
RUN_AS = "postgres"
# Durability is not wanted in a throwaway server; a small footprint is.
SERVER_OPTIONS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                  "-c max_connections=40 -c shared_buffers=16MB")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server programs here, or the server would not start; the message says why."""


def find_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin, else the directory of `initdb` on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    found = candidates[-1] if candidates else shutil.which("initdb")
    if not found:
        raise PostgresUnavailable("no PostgreSQL server programs (initdb, pg_ctl): install postgresql")
    return Path(found).parent


def reachable(path: Path, uid: int, gid: int) -> bool:
    """True when the user (uid, gid) may enter `path` and every folder above it."""
    for folder in (path, *path.parents):
        mode = folder.stat()
        bit = (stat.S_IXUSR if mode.st_uid == uid else stat.S_IXGRP if mode.st_gid == gid else stat.S_IXOTH)
        if not mode.st_mode & bit:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:<free port> and a unix
    socket inside that folder, with one database (`database`) created on first start."""

    def __init__(self, database: str = "cvdb", base: Path | None = None) -> None:
        self.bindir = find_bindir()
        self.database = database
        self._as_postgres = os.geteuid() == 0
        account = pwd.getpwnam(RUN_AS) if self._as_postgres else None
        if account and base is not None and not reachable(base.resolve(), account.pw_uid, account.pw_gid):
            base = None
        self.root = Path(tempfile.mkdtemp(prefix="cvdb-pg-", dir=base))
        self.data, self.sockets, self.log = self.root / "data", self.root / "sockets", self.root / "server.log"
        self.port = free_port()
        self._initialised = self._created = False
        self.sockets.mkdir()
        if account:
            for path in (self.root, self.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)
        atexit.register(self.close)  # a test process that dies early still leaves nothing running

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{self.database}"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """Start (initdb on the first call) and wait until it accepts connections; idempotent."""
        if not self._initialised:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-locale",
                      "--encoding=UTF8", "--no-sync", timeout=120)
            self._initialised = True
        if self.running():
            return self
        for attempt in range(START_ATTEMPTS):
            try:
                self._start_once()
                break
            except PostgresUnavailable:
                if attempt == START_ATTEMPTS - 1 or self._created or "could not bind" not in self.log_tail():
                    raise
                self.port = free_port()  # taken meanwhile; before the first use, any port will do
        if not self._created:
            self._create_database()
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: disconnect clients; `immediate`: as if it crashed); idempotent."""
        if not self._initialised or not self.running():
            return
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", str(int(STOP_TIMEOUT_S)),
                  timeout=STOP_TIMEOUT_S + 10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        if not self._initialised:
            return False
        done = self._run("pg_ctl", "status", "-D", str(self.data), check=False, timeout=15)
        return done.returncode == 0

    def close(self) -> None:
        """Stop the server (immediately if a fast stop fails) and remove its folder."""
        atexit.unregister(self.close)
        with contextlib.suppress(Exception):
            self.stop()
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ------------------------------------------------------------------------------

    def _start_once(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 " \
                  f"-c unix_socket_directories={shlex.quote(str(self.sockets))} {SERVER_OPTIONS}"
        done = self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-o", options,
                         "-w", "-t", str(int(START_TIMEOUT_S)), check=False, timeout=START_TIMEOUT_S + 10)
        if done.returncode != 0:
            raise PostgresUnavailable(f"PostgreSQL did not start on port {self.port}: "
                                      f"{done.stderr.strip()[-300:]}\n{self.log_tail()}")
        self._wait_ready()

    def _wait_ready(self) -> None:
        """pg_isready against the TCP address clients use, for at most START_TIMEOUT_S."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            done = self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-t", "2", check=False,
                             timeout=10)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"PostgreSQL on port {self.port} not ready after {START_TIMEOUT_S:.0f} s "
                                          f"({done.stdout.strip()})\n{self.log_tail()}")
            time.sleep(0.2)

    def _create_database(self) -> None:
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        finally:
            conn.close()
        self._created = True

    def _run(self, program: str, *args: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / program), *args]
        if self._as_postgres:
            argv = ["runuser", "-u", RUN_AS, "--", *argv]
        # The server's working directory must be readable by the postgres user.
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise PostgresUnavailable(f"{program} failed ({done.returncode}): "
                                      f"{(done.stderr or done.stdout).strip()[-500:]}")
        return done
