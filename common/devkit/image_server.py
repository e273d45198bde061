"""A real HTTP server on 127.0.0.1 for tests, the demo and benchmarks: images plus misbehaving routes.

It runs an aiohttp web app on an ephemeral port in a background thread with its own event loop:

    with ImageServer() as server:
        url = server.add("/a.jpg", jpeg_bytes)
        ...
        assert server.hits["/a.jpg"] == 1

`add`/`add_file` register images (they win over the built-in routes below); `delay_s` delays every
registered image, to simulate a CDN in benchmarks. `hits` counts requests per path, and
`max_in_flight` is the most requests the server was handling at the same time.

Built-in misbehaving routes:

- `/status/{code}`: answers with that HTTP status (e.g. 404, 500) and a short text body.
- `/slow/{seconds}`: sleeps that long, then serves a small valid JPEG.
- `/flaky/{key}`: the first request per key gets 429 with `Retry-After: 1`, later ones a valid JPEG.
- `/flaky503/{key}`: 503 for the first two requests per key, then a valid JPEG.
- `/redirect?to=<url>`: 302 to `<url>`.
- `/redirect-chain/{n}`: n redirect hops (302 to `/redirect-chain/{n-1}`), then a valid JPEG.
- `/redirect-private`: 302 to the cloud metadata service, http://169.254.169.254/latest/meta-data/.
- `/html`: a 200 text/html page (a soft 404) under an image-looking route.
- `/fake.jpg`: an HTML body sent with `Content-Type: image/jpeg`.
- `/noai.jpg`: a valid JPEG with `X-Robots-Tag: noai`.
- `/oversized.jpg`: streams `oversized_bytes` bytes (a JPEG header, then filler), chunked, with no
  Content-Length.
- `/big-length.jpg`: declares `Content-Length: oversized_bytes` and starts streaming that body.
- `/empty.jpg`: 200 with an empty body and `Content-Type: image/jpeg`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import io
import mimetypes
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from aiohttp import web
from PIL import Image

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METADATA_URL = "http://169.254.169.254/latest/meta-data/"
_HTML = b"<!doctype html><html><head><title>Not found</title></head><body>Gone.</body></html>"
_CHUNK = 64 * 1024


@functools.cache
def small_jpeg() -> bytes:
    """A 64x48 colour gradient JPEG: a valid image for the built-in routes."""
    image = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


@dataclass(frozen=True)
class _File:
    data: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


class ImageServer:
    """Serves registered images and the misbehaving routes listed in the module docstring."""

    def __init__(self, delay_s: float = 0.0, oversized_bytes: int = 24 * 1024 * 1024) -> None:
        self.delay_s = delay_s
        self.oversized_bytes = oversized_bytes
        self.hits: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._files: dict[str, _File] = {}
        self._seen: collections.Counter[str] = collections.Counter()  # per flaky key
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- registration ---------------------------------------------------------------------------

    def add(self, path: str, data: bytes, content_type: str = "image/jpeg",
            headers: Mapping[str, str] | None = None) -> str:
        path = _normalise(path)
        self._files[path] = _File(data, content_type, dict(headers or {}))
        return self.url(path)

    def add_file(self, path: str, file: Path, content_type: str | None = None) -> str:
        guessed = content_type or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return self.add(path, Path(file).read_bytes(), guessed)

    @property
    def port(self) -> int:
        return int(self._socket().getsockname()[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{_normalise(path)}"

    def reset_stats(self) -> None:
        self.hits.clear()
        self.max_in_flight = self.in_flight

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> ImageServer:
        if self._thread is not None:
            return self
        started = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(started,), name="image-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout=30) or self._runner is None:
            raise RuntimeError("the image server did not start")
        return self

    def stop(self) -> None:
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is not None and thread is not None and runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()
        if self._sock is not None:
            self._sock.close()
        self._loop = self._thread = self._runner = self._sock = None

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _socket(self) -> socket.socket:
        if self._sock is None:  # bound on first use, so URLs are known before start()
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(("127.0.0.1", 0))
        return self._sock

    def _serve(self, started: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start_site())
        finally:
            started.set()
        self._loop.run_forever()

    async def _start_site(self) -> None:
        runner = web.AppRunner(self._app(), handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        await web.SockSite(runner, self._socket()).start()
        self._runner = runner

    # -- routes ---------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._count, self._registered])
        app.add_routes([
            web.get("/status/{code:\\d+}", self._status),
            web.get("/slow/{seconds}", self._slow),
            web.get("/flaky/{key}", self._flaky),
            web.get("/flaky503/{key}", self._flaky503),
            web.get("/redirect", self._redirect),
            web.get("/redirect-chain/{n:\\d+}", self._redirect_chain),
            web.get("/redirect-private", _fixed(lambda: _found(METADATA_URL))),
            web.get("/html", _fixed(lambda: _ok(_HTML, "text/html"))),
            web.get("/fake.jpg", _fixed(lambda: _ok(_HTML, "image/jpeg"))),
            web.get("/noai.jpg", _fixed(lambda: _ok(small_jpeg(), "image/jpeg", {"X-Robots-Tag": "noai"}))),
            web.get("/oversized.jpg", functools.partial(self._stream, declare_length=False)),
            web.get("/big-length.jpg", functools.partial(self._stream, declare_length=True)),
            web.get("/empty.jpg", _fixed(lambda: _ok(b"", "image/jpeg"))),
        ])
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.hits[request.path] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    @web.middleware
    async def _registered(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        file = self._files.get(request.path)
        if file is None:
            return await handler(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return _ok(file.data, file.content_type, file.headers)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        code = int(request.match_info["code"])
        if not 200 <= code <= 599:
            return web.Response(status=400, text="status must be 200-599")
        body = None if code in (204, 304) else f"status {code}"
        return web.Response(status=code, text=body)

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.match_info["seconds"]))
        return _ok(small_jpeg(), "image/jpeg")

    async def _flaky(self, request: web.Request) -> web.StreamResponse:
        return self._fail_first(request, "flaky", 1, 429, {"Retry-After": "1"})

    async def _flaky503(self, request: web.Request) -> web.StreamResponse:
        return self._fail_first(request, "flaky503", 2, 503, {})

    def _fail_first(self, request: web.Request, kind: str, times: int, status: int,
                    headers: Mapping[str, str]) -> web.StreamResponse:
        key = f"{kind}/{request.match_info['key']}"
        self._seen[key] += 1
        if self._seen[key] <= times:
            return web.Response(status=status, text=f"try again ({self._seen[key]})", headers=headers)
        return _ok(small_jpeg(), "image/jpeg")

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        return _found(request.query.get("to", "/"))

    async def _redirect_chain(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        return _found(f"/redirect-chain/{n - 1}") if n > 0 else _ok(small_jpeg(), "image/jpeg")

    async def _stream(self, request: web.Request, declare_length: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        if declare_length:
            response.content_length = self.oversized_bytes
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        head = small_jpeg()[:_CHUNK]
        sent = 0
        try:
            while sent < self.oversized_bytes:
                chunk = (head if sent == 0 else b"\0" * _CHUNK)[: self.oversized_bytes - sent]
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up once it had seen enough, which is what the tests expect
        return response


def _fixed(make: Callable[[], web.StreamResponse]) -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        return make()

    return handler


def _normalise(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def _ok(data: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> web.Response:
    response = web.Response(body=data, headers=dict(headers or {}))
    response.headers["Content-Type"] = content_type
    return response


def _found(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location}, text="redirecting")
