"""Decode untrusted images in persistent worker processes that are killed when they overrun.

Why processes: a hostile file (thousands of JPEG scans, a pathological PNG) can hold a core for
minutes inside Pillow's C code, where no Python thread can be stopped; a process can be killed.
Decoding in processes also scales past the GIL: N workers use N cores.

Why `subprocess.Popen(sys.executable, "-m", this module)` and not `multiprocessing`: the
service's fetch tasks run inside Celery prefork children, which are daemonic, and
multiprocessing refuses to give a daemonic process children. Popen has no such rule.

How: each worker runs `serve()`: it reads a length-prefixed pickled request (url, bytes,
settings) from its stdin, runs the pure `accept.check_download` on it and writes the pickled
`Checked` or `Rejected` back to its stdout. The calling thread waits for the answer with a
deadline (`decode_timeout_s`); past it the worker is killed and reaped at once (no zombie) and
the image is dropped as `decode_timeout`. A worker that dies on its own drops its image as
`decode_error`. A killed worker is started again on its next use, after its start-up and
outside any image's budget; the others keep running, so start-up is paid once per worker.

Lifetime: `shared_pool()` gives one lazily started pool per process, kept between calls (the
service's fetch task runs once per chunk of 50 URLs: starting workers per chunk would cost more
than it decodes). It is closed when the process ends (stdin closed, worker exits, reaped): by
atexit, and by a multiprocessing finalizer, which also runs where atexit does not: at the end of
a multiprocessing or Celery (billiard) child, which leaves with os._exit. A process killed
outright closes nothing, but each worker then sees end-of-file on its stdin and exits by itself.
A forked child forgets the pool it inherited (its workers belong to the parent) and starts its own.
"""

from __future__ import annotations

import atexit
import fcntl
import math
import multiprocessing.util
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from common.config import Settings
    from common.pipeline.accept import Checked, Rejected
    from common.pipeline.clip_input import ClipInput

_MODULE = "common.pipeline.decode_pool"
_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `common` package
_HEADER = 8  # bytes of big-endian payload length before every message
_READY = b"ready"
_START_TIMEOUT_S = 120.0  # imports on a busy machine; not charged to any image
_CLOSE_TIMEOUT_S = 5.0


class WorkerGone(Exception):
    """The worker process exited or closed its pipe before answering."""


def _worker_env() -> dict[str, str]:
    """The parent's environment, with this checkout importable, one thread per library, and glibc
    told to keep freed memory (each only where the environment does not say otherwise).

    Between images a worker's heap is churned by the messages; glibc then hands the freed pages
    back to the kernel and faults them in again for the next image (~5,000 faults, +50% decode
    time). Keeping up to 64 MB free, and allocations under 32 MB on the heap, avoids that.
    """
    defaults = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20),
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # N workers already use N cores
    env = {**defaults, **os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))
    return env


def _widen(pipe: BinaryIO | None) -> None:
    """1 MiB pipes instead of 64 KiB: an image crosses in a few reads, not dozens of wake-ups."""
    try:
        if pipe is not None:
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    except (AttributeError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default size works too


class _Worker:
    """One decode process and its two pipes; started on first use and again after a kill."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.stop()
        # cwd=_ROOT: `-m` puts the working folder first on sys.path; it must be this checkout.
        self.proc = subprocess.Popen([sys.executable, "-m", _MODULE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0, cwd=_ROOT, env=_worker_env())
        for pipe in (self.proc.stdin, self.proc.stdout):
            _widen(pipe)
        try:
            if self._receive(time.monotonic() + _START_TIMEOUT_S) != _READY:
                raise WorkerGone("the decode worker did not say it was ready")
        except (TimeoutError, WorkerGone) as exc:
            self.stop()
            raise RuntimeError(f"could not start a decode worker ({sys.executable} -m {_MODULE}): {exc}") from exc

    def run(self, url: str, payload: bytes, timeout_s: float) -> Checked | bytes | Rejected:
        """Send one request and wait for its answer; a worker that overruns is killed."""
        from common.pipeline.accept import Rejected  # not at the top: a worker imports it only once its pipes are safe

        self.start()
        try:
            deadline = time.monotonic() + timeout_s
            self._send(payload)
            reply = self._receive(deadline)
        except TimeoutError:
            self.stop()
            return Rejected(url, "decode_timeout", f"decoding took more than {timeout_s:g} s; the decoder was stopped")
        except WorkerGone:
            status = self.stop()
            return Rejected(url, "decode_error", f"the decoder process died (exit status {status})")
        except BaseException:
            self.stop()  # interrupted mid-message (a revoke, Ctrl-C): the pipe is out of step
            raise
        return pickle.loads(reply)

    def _send(self, payload: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(len(payload).to_bytes(_HEADER, "big"))
            view = memoryview(payload)
            while view:  # a raw pipe may take part of a large write
                view = view[self.proc.stdin.write(view) or 0 :]
        except (BrokenPipeError, ValueError) as exc:
            raise WorkerGone(str(exc)) from exc

    def _receive(self, deadline: float) -> bytes:
        size = int.from_bytes(self._read_exact(_HEADER, deadline), "big")
        return self._read_exact(size, deadline)

    def _read_exact(self, size: int, deadline: float) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        poller = select.poll()  # not select(): no limit on the descriptor's number
        poller.register(fd, select.POLLIN)
        buffer = bytearray()
        while len(buffer) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(math.ceil(remaining * 1000)):
                raise TimeoutError
            chunk = os.read(fd, min(size - len(buffer), 1 << 20))
            if not chunk:
                raise WorkerGone("the decode worker closed its pipe")
            buffer += chunk
        return bytes(buffer)

    def stop(self, graceful: bool = False) -> int | None:
        """End the process and reap it; graceful: let it exit on end-of-input first."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if graceful and proc.stdin is not None:
            proc.stdin.close()
            try:
                proc.wait(_CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        proc.kill()  # a no-op if it has exited
        status = proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        return status

    def forget(self) -> None:
        """In a forked child: drop the parent's worker without signalling it, closing our copies."""
        proc, self.proc = self.proc, None
        for pipe in (proc.stdin, proc.stdout) if proc else ():
            if pipe is not None:
                pipe.close()


class DecodePool:
    """`workers` persistent decode processes; `check` is `accept.check_download` run in one of them.

    Thread-safe: each call takes an idle worker (waiting for one if all are busy, which does
    not count against the image's budget) and gives it back when done.
    """

    def __init__(self, workers: int) -> None:
        self.size = workers
        self._workers = [_Worker() for _ in range(workers)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._workers:
            self._idle.put(worker)
        self._closed = False

    def check(self, url: str, data: bytes, settings: Settings, clip: ClipInput | None = None) -> Checked | Rejected:
        return self._run(url, ("check", url, data, settings, clip), settings.decode_timeout_s)  # type: ignore[return-value]

    def export(self, url: str, data: bytes, settings: Settings) -> bytes | Rejected:
        """`accept.export_jpeg` in a worker: the full decode of a kept picture, under the same time budget."""
        return self._run(url, ("export", url, data, settings, None), settings.decode_timeout_s)  # type: ignore[return-value]

    def _run(self, url: str, request: tuple[object, ...], timeout_s: float) -> Checked | bytes | Rejected:
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        worker = self._idle.get()
        try:
            if self._closed:
                raise RuntimeError("the decode pool is closed")
            return worker.run(url, payload, timeout_s)
        finally:
            self._idle.put(worker)

    def pids(self) -> list[int]:
        """The running workers' process ids (for tests and diagnostics)."""
        return [pid for pid in (worker.pid for worker in self._workers) if pid is not None]

    def close(self) -> None:
        """Stop idle workers gracefully; a busy one is killed and its caller cleans up."""
        self._closed = True
        idle = []
        while True:
            try:
                idle.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for worker in self._workers:
            if worker in idle:
                worker.stop(graceful=True)
            elif worker.proc is not None:
                worker.proc.kill()
        for worker in idle:
            self._idle.put(worker)

    def forget(self) -> None:
        for worker in self._workers:
            worker.forget()


_shared: DecodePool | None = None
_shared_lock = threading.Lock()
_finalizer_pid: int | None = None  # the process that registered close_shared_pool as a finalizer


def shared_pool(workers: int) -> DecodePool:
    """This process's decode pool: started lazily, replaced when `workers` changes, closed at exit."""
    global _shared, _finalizer_pid
    with _shared_lock:
        if _shared is None or _shared.size != workers:
            if _shared is not None:
                _shared.close()
            _shared = DecodePool(workers)
        if _finalizer_pid != os.getpid():
            # Runs at exit of the main process and of multiprocessing/billiard children alike
            # (billiard shares multiprocessing's finalizer registry); a fork child clears it.
            multiprocessing.util.Finalize(None, close_shared_pool, exitpriority=10)
            _finalizer_pid = os.getpid()
        return _shared


def close_shared_pool() -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
            _shared = None


def _forget_after_fork() -> None:
    global _shared, _shared_lock
    _shared_lock = threading.Lock()  # another thread may have held it at the fork
    if _shared is not None:
        _shared.forget()
        _shared = None


atexit.register(close_shared_pool)
os.register_at_fork(after_in_child=_forget_after_fork)


# ---- the worker side --------------------------------------------------------------------------


def _read_message(stream: BinaryIO) -> bytes | None:
    header = stream.read(_HEADER)
    if len(header) < _HEADER:
        return None  # the parent closed the pipe or is gone: time to exit
    size = int.from_bytes(header, "big")
    payload = stream.read(size)
    return payload if len(payload) == size else None


def _write_message(stream: BinaryIO, payload: bytes) -> None:
    stream.write(len(payload).to_bytes(_HEADER, "big"))
    stream.write(payload)
    stream.flush()


def _claim_pipes() -> tuple[BinaryIO, BinaryIO]:
    """Keep the request and reply pipes private: a library printing to stdout must not corrupt them."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # stray prints go to stderr
    return requests, replies


def serve() -> None:
    """The worker loop: read a request, run the pure checks, answer; exit when the input ends."""
    requests, replies = _claim_pipes()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then closes us
    import cv2
    from PIL import ImageFile

    from common.pipeline.accept import Rejected, check_download, export_jpeg

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a short file is refused, never padded with grey
    cv2.setNumThreads(1)  # one core per worker: N workers use N cores, not N times all of them
    _write_message(replies, _READY)
    while (message := _read_message(requests)) is not None:
        task, url, data, settings, clip = pickle.loads(message)
        try:
            result: object = export_jpeg(url, data, settings) if task == "export" else check_download(url, data, settings, clip)
        except Exception as exc:  # a hostile file must not take the batch down with it
            result = Rejected(url, "decode_error", f"the decoder failed: {exc!r}")
        try:
            _write_message(replies, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        except BrokenPipeError:
            return  # the parent stopped listening (it timed us out or is gone)


if __name__ == "__main__":
    serve()
