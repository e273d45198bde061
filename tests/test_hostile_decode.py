"""Files built to tie up a decoder: too many scans, decodes that overrun, data that stops early.

Every hostile file is made here from Pillow's own output; the decode pool's workers are real
processes, checked with psutil. Waits are on conditions with limits, never on luck.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import xxhash
from PIL import Image, ImageFile

from common.config import Settings
from common.devkit import planted
from common.pipeline import reasons
from common.pipeline.accept import Checked, Rejected, StagedImage, check_download, stage_download
from common.pipeline.decode import DecodeError, decode_image, encode_jpeg, jpeg_end
from common.pipeline.decode_pool import DecodePool, shared_pool
from common.pipeline.reasons import stage_of

SETTINGS = Settings()
ROOT = Path(__file__).resolve().parents[1]


# ---- building hostile files -------------------------------------------------------------------


def _noise_picture(side: tuple[int, int], seed: int = 1) -> Image.Image:
    """Smooth random colours: real detail in every block, quick to encode."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize(side, Image.Resampling.BICUBIC)


def _scan_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every scan: its SOS segment and its entropy-coded data (a naive walk)."""
    spans, pos = [], 2
    while data[pos + 1] != 0xD9:
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if data[pos + 1] == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
            spans.append((pos, end))
        pos = end
    return spans


def scan_bomb(side: int, scans: int) -> bytes:
    """A progressive JPEG whose smallest scan is repeated until the file has `scans` scans."""
    data = planted.encode(_noise_picture((side, side)), "JPEG", quality=80, progressive=True)
    spans = _scan_spans(data)
    start, end = min(spans, key=lambda span: span[1] - span[0])
    return data[:end] + data[start:end] * (scans - len(spans)) + data[end:]


def header_lies(declared: tuple[int, int], carried: tuple[int, int]) -> bytes:
    """A baseline JPEG whose header declares `declared` but whose data holds only `carried`."""
    data = bytearray(planted.encode(_noise_picture(carried), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = declared[1].to_bytes(2, "big") + declared[0].to_bytes(2, "big")
    return bytes(data)


def cut_short(side: tuple[int, int], keep: float, end_marker: bool) -> bytes:
    """A big baseline JPEG with its data cut after `keep` of it, header intact (EOI re-added or not)."""
    data = planted.encode(_noise_picture(side), "JPEG", quality=90)
    return data[: int(len(data) * keep)] + (b"\xff\xd9" if end_marker else b"")


@pytest.fixture()
def pool() -> Iterator[DecodePool]:
    own = DecodePool(1)
    try:
        yield own
    finally:
        own.close()


def _wait_until(condition: Callable[[], bool], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _gone(pid: int) -> bool:
    """Not running and not a zombie either: exited and reaped."""
    try:
        psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return False


# ---- too many scans ---------------------------------------------------------------------------


def test_scan_bomb_is_refused_from_its_markers_without_decoding(monkeypatch: pytest.MonkeyPatch,
                                                                pool: DecodePool) -> None:
    data = scan_bomb(4000, 60_000)  # ~2 MB, within every byte and pixel cap; minutes to decode
    assert len(data) < SETTINGS.max_bytes

    def no_decoding(*args: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(DecodeError) as caught:
        decode_image(data)
    assert caught.value.reason == "too_many_scans"
    refused = check_download("u", data, SETTINGS)
    assert isinstance(refused, Rejected) and refused.reason == "too_many_scans"
    # In a worker too, well inside the budget (a decode would have run into decode_timeout).
    result = pool.check("u", data, SETTINGS)
    assert isinstance(result, Rejected) and result.reason == "too_many_scans", result


def test_the_scan_cap_is_exact_and_a_setting() -> None:
    ordinary = planted.progressive_jpeg(planted.photo(11))
    assert 5 <= len(_scan_spans(ordinary)) <= 20  # what real progressive files have
    at_cap, over_cap = scan_bomb(400, 100), scan_bomb(400, 101)
    assert len(_scan_spans(at_cap)) == 100
    assert jpeg_end(at_cap, max_scans=100) == len(at_cap) - 2
    with pytest.raises(DecodeError) as caught:
        jpeg_end(over_cap, max_scans=100)
    assert caught.value.reason == "too_many_scans"
    raised_cap = check_download("u", over_cap, Settings(max_jpeg_scans=101, min_side=1))
    assert getattr(raised_cap, "reason", None) != "too_many_scans"


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"restart_marker_blocks": 3},
                                     {"restart_marker_rows": 1, "progressive": True}])
def test_marker_walk_skips_stuffed_bytes_and_restart_markers(options: dict[str, object]) -> None:
    data = planted.encode(_noise_picture((640, 480), seed=3), "JPEG", quality=97, **options)
    assert data.count(b"\xff\x00") > 50  # plenty of stuffed 0xFF data bytes to walk past
    if "restart_marker_blocks" in options:
        assert data.count(b"\xff\xd0") > 10
    assert jpeg_end(data, max_scans=100) == len(data) - 2
    assert jpeg_end(data + b"\xff\xd9trailing junk", max_scans=100) == len(data) - 2


# ---- decode budget ----------------------------------------------------------------------------


def test_a_decode_that_overruns_is_killed_and_the_next_one_works(pool: DecodePool) -> None:
    good = planted.encode(planted.photo(10), "JPEG", quality=90)
    assert isinstance(pool.check("warm-up", good, SETTINGS), Checked)
    [pid] = pool.pids()
    worker = psutil.Process(pid)
    # ~30,000 scans of a 2000x2000 picture: about 20 s of decoding on this machine, under a 1 s budget.
    slow = Settings(max_jpeg_scans=100_000, decode_timeout_s=1.0)
    started = time.monotonic()
    result = pool.check("slow", scan_bomb(2000, 30_000), slow)
    assert isinstance(result, Rejected) and result.reason == "decode_timeout", result
    assert time.monotonic() - started < 15  # answered at the budget, not after the decode
    assert not worker.is_running() and _gone(pid)  # killed and reaped: no zombie
    assert not [child for child in psutil.Process().children() if child.status() == psutil.STATUS_ZOMBIE]
    again = pool.check("next", good, SETTINGS)
    assert isinstance(again, Checked)
    assert pool.pids() and pool.pids() != [pid]  # only the killed worker was started again


def test_an_export_decode_that_overruns_is_killed_too(pool: DecodePool) -> None:
    """Export decodes a kept picture in full, in the same workers under the same budget."""
    good = planted.encode(planted.photo(10), "JPEG", quality=90)
    exported = pool.export("kept", good, SETTINGS)
    assert isinstance(exported, bytes) and exported == encode_jpeg(decode_image(good), SETTINGS.jpeg_quality)
    slow = Settings(max_jpeg_scans=100_000, decode_timeout_s=1.0)
    result = pool.export("slow", scan_bomb(2000, 30_000), slow)
    assert isinstance(result, Rejected) and result.reason == "decode_timeout", result
    assert isinstance(pool.export("next", good, SETTINGS), bytes)


def test_a_worker_that_dies_mid_decode_drops_its_image_and_is_replaced(pool: DecodePool) -> None:
    good = planted.encode(planted.photo(10), "JPEG", quality=90)
    assert isinstance(pool.check("warm-up", good, SETTINGS), Checked)
    [pid] = pool.pids()
    worker = psutil.Process(pid)
    idle_cpu = sum(worker.cpu_times()[:2])
    slow = Settings(max_jpeg_scans=100_000, decode_timeout_s=300)
    with ThreadPoolExecutor(1) as caller:
        pending = caller.submit(pool.check, "crash", scan_bomb(2000, 30_000), slow)
        assert _wait_until(lambda: sum(worker.cpu_times()[:2]) > idle_cpu + 0.3, 60)  # busy decoding
        worker.kill()  # as a decoder crash or the kernel's OOM killer would
        result = pending.result(timeout=60)
    assert isinstance(result, Rejected) and result.reason == "decode_error" and "died" in result.detail, result
    assert _gone(pid)
    after = pool.check("after", good, SETTINGS)
    assert isinstance(after, Checked), after


# ---- data that stops early --------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: header_lies((6000, 6666), (800, 800)),
    lambda: cut_short((3000, 3000), keep=0.05, end_marker=True),
    lambda: cut_short((3000, 3000), keep=0.9, end_marker=True),
], ids=["header-declares-6000x6666-data-800x800", "cut-at-5%-then-EOI", "cut-at-90%-then-EOI"])
def test_grey_fill_from_missing_data_is_refused_as_truncated(make: Callable[[], bytes], pool: DecodePool) -> None:
    data = make()
    with pytest.raises(DecodeError) as caught:
        decode_image(data)
    assert caught.value.reason == "truncated"
    result = pool.check("u", data, Settings(decode_timeout_s=120))
    assert isinstance(result, Rejected) and result.reason == "truncated", result


def test_a_cut_file_is_refused_even_where_pillow_would_pad_it(monkeypatch: pytest.MonkeyPatch) -> None:
    data = cut_short((3000, 3000), keep=0.05, end_marker=False)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what some libraries set
    with pytest.raises(DecodeError) as caught:
        decode_image(data)
    assert caught.value.reason == "truncated"


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_complete_picture_with_a_mid_grey_corner_is_kept(progressive: bool, mode: str) -> None:
    picture = Image.new("RGB", (900, 700), (128, 128, 128))
    picture.paste(_noise_picture((900, 350)), (0, 0))
    data = planted.encode(picture.convert(mode), "JPEG", quality=90, progressive=progressive, optimize=True)
    decoded = np.asarray(decode_image(data))
    assert (decoded[-8:, -8:] == 128).all()  # the corner that prompts the second look
    checked = check_download("u", data, SETTINGS)  # decoded at 1/2 (DCT scaling): the same second look
    assert getattr(checked, "reason", None) != "truncated", checked


# ---- ordinary files: the same result through the pool -----------------------------------------


ORDINARY = {
    "baseline.jpg": planted.encode(planted.photo(10), "JPEG", quality=90),
    "progressive.jpg": planted.progressive_jpeg(planted.photo(11)),
    "cmyk.jpg": planted.cmyk_jpeg(planted.photo(12)),
    "rotated.jpg": planted.exif_rotated_jpeg(planted.photo(10)),
    "alpha.png": planted.alpha_png(planted.photo(13)),
    "palette.png": planted.palette_png(planted.photo(14)),
    "picture.webp": planted.webp(planted.photo(15)),
    "animated.gif": planted.animated_gif(planted.photo(16)),
    "picture.bmp": planted.encode(planted.photo(18), "BMP"),
}


@pytest.mark.parametrize("name", sorted(ORDINARY))
def test_ordinary_files_come_out_identical_through_the_pool(name: str, tmp_path: Path) -> None:
    data = ORDINARY[name]
    here, there = check_download(name, data, SETTINGS), shared_pool(2).check(name, data, SETTINGS)
    assert isinstance(here, Checked) and isinstance(there, Checked), (here, there)
    assert (there.width, there.height, there.scores) == (here.width, here.height, here.scores)
    assert (there.fingerprint.pixel_hash, there.fingerprint.phash) == (here.fingerprint.pixel_hash,
                                                                       here.fingerprint.phash)
    assert np.array_equal(there.fingerprint.thumb, here.fingerprint.thumb)
    assert np.array_equal(there.fingerprint.layout, here.fingerprint.layout)
    # The full-size pixels are those of the in-process decode, bit for bit.
    assert there.fingerprint.pixel_hash == xxhash.xxh3_128_hexdigest(decode_image(data).tobytes())
    (tmp_path / "pool").mkdir()
    (tmp_path / "local").mkdir()
    staged = stage_download(name, data, "?", "a" * 64, SETTINGS, tmp_path / "pool", pool=shared_pool(2))
    local = stage_download(name, data, "?", "a" * 64, SETTINGS, tmp_path / "local")
    assert isinstance(staged, StagedImage) and isinstance(local, StagedImage)
    assert staged.path.read_bytes() == local.path.read_bytes() and staged.scores == local.scores


def test_planted_rejections_are_the_same_through_the_pool() -> None:
    for name, (data, expected) in planted.planted_set().items():
        result = shared_pool(2).check(name, data, SETTINGS)
        assert getattr(result, "reason", None) == expected, (name, result)


# ---- inside a daemonic process (a Celery prefork child) ----------------------------------------


def _decode_in_daemon(results: multiprocessing.Queue, data: bytes) -> None:
    assert multiprocessing.current_process().daemon
    pool = shared_pool(1)
    result = pool.check("daemon", data, SETTINGS)
    results.put((type(result).__name__, getattr(result, "reason", None), pool.pids(), os.getpid()))


def test_the_pool_works_inside_a_daemonic_process() -> None:
    shared_pool(2).check("parent", ORDINARY["baseline.jpg"], SETTINGS)  # the fork inherits a live pool
    context = multiprocessing.get_context("fork")  # how Celery's prefork pool makes its children
    results = context.Queue()
    daemon = context.Process(target=_decode_in_daemon, args=(results, ORDINARY["baseline.jpg"]), daemon=True)
    daemon.start()
    try:
        kind, reason, pids, daemon_pid = results.get(timeout=120)
        daemon.join(timeout=60)
    finally:
        if daemon.is_alive():
            daemon.kill()
    assert (kind, reason) == ("Checked", None)
    assert daemon.exitcode == 0 and daemon_pid == daemon.pid
    assert pids and not set(pids) & set(shared_pool(2).pids())  # its own worker, not the parent's
    assert _wait_until(lambda: all(_gone(pid) for pid in pids), 10)  # closed as the daemon ended
    assert isinstance(shared_pool(2).check("parent", ORDINARY["baseline.jpg"], SETTINGS), Checked)


# An atexit handler registered before the pool's runs after it (LIFO): it sees whether the
# process reaped its own workers before leaving (orphans would be left to whoever adopts them).
_PLAIN_PROCESS = """
import atexit, sys, psutil
pids = []
atexit.register(lambda: print("reaped" if pids and not any(map(psutil.pid_exists, pids)) else "left", pids))
from common.config import Settings
from common.pipeline.decode_pool import shared_pool
result = shared_pool(2).check("u", sys.stdin.buffer.read(), Settings())
pids.extend(shared_pool(2).pids())
print(type(result).__name__)
"""


def test_a_plain_process_reaps_its_workers_when_it_exits() -> None:
    done = subprocess.run([sys.executable, "-c", _PLAIN_PROCESS], input=ORDINARY["baseline.jpg"],
                          capture_output=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "Checked" and lines[1].startswith("reaped"), lines


# ---- the catalogue ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["too_many_scans", "decode_timeout"])
def test_new_reasons_are_explained_in_the_catalogue(code: str) -> None:
    entry = reasons.catalogue()[code]
    assert entry["description"] and entry["stage"] == "quality" == stage_of(code)
