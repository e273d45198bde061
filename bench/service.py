"""The distributed service end to end: `cvdb serve` as real processes, timed from outside through its API.

Reuses `tests/service_harness.Service` (a throwaway Postgres database, an empty Redis db number, the API,
N CPU workers with one process each, the GPU worker, beat and Flower) with the tiny CLIP and a fake Naver
whose results are the bench corpus, served by `bench.serve_child`. Three measurements:

- `throughput`: K jobs submitted at once, same query, different outputs; first submit to last done.
- `overhead`: one job through the service against `cvdb build` with the same settings and input.
- `api_latency`: per-endpoint request latency while threads submit small jobs and poll the job list
  and single jobs.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import re
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import requests

from bench.server import FIXTURE_OVERRIDES, ROOT
from bench.timing import rate, stopwatch
from common.config import Settings
from common.devkit import corpus
from common.devkit.demo import tiny_model_settings
from common.devkit.fake_naver import FakeNaver

QUERY = corpus.TARGET
FINAL = {"done", "failed", "cancelled"}
POLL_S = 0.2  # how often the K jobs are polled: the resolution of "last done"
SUBMIT_INTERVAL_S = 1.0  # each submitting thread of the latency load posts one small job per second
LATENCY_JOB_URLS = 8  # URLs per small job of the latency load (source "urls", limit 5)
EMBEDDED = re.compile(r"embedded \d+ images in ([0-9.]+) s")


def harness() -> ModuleType:
    """`tests/service_harness.py` as a module, without putting tests/ on sys.path."""
    spec = importlib.util.spec_from_file_location("service_harness", ROOT / "tests" / "service_harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unavailable() -> str | None:
    """Why the service cannot be started here (Postgres or Redis missing), or None."""
    import psycopg2
    import redis
    from sqlalchemy.engine import make_url

    url = make_url(os.environ.get("CVDB_DATABASE_URL", Settings().database_url))
    try:
        psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                         dbname="postgres", connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        return f"no Postgres at {url.host}:{url.port or 5432} ({str(exc).strip().splitlines()[0]})"
    server = os.environ.get("CVDB_TEST_REDIS", "redis://127.0.0.1:6379")
    try:
        redis.Redis.from_url(server, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        return f"no Redis at {server} ({exc})"
    return None


def service_settings(model_dir: Path, naver: FakeNaver, chunk_size: int) -> dict[str, object]:
    """What the workers and `cvdb build` both run with: the tests' settings, plus the bench's per-host cap."""
    return {**tiny_model_settings(model_dir), **naver.settings_overrides(), **FIXTURE_OVERRIDES,
            "fetch_chunk_size": chunk_size}


def job_limit(images: int, settings: dict[str, object]) -> int:
    """The `limit` whose candidate budget (limit x oversample) covers every served image."""
    oversample = float(settings.get("oversample", Settings().oversample))  # type: ignore[arg-type]
    return max(1, math.ceil(images / oversample))


# -- waiting on jobs --------------------------------------------------------------------------------

def wait_all(service: Any, ids: Sequence[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Poll until every job is final; each job's JSON gains `seen_final_at` (perf_counter)."""
    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(final) < len(ids):
        for job_id in ids:
            if job_id not in final:
                job = service.job(job_id)
                if job["status"] in FINAL:
                    final[job_id] = {**job, "seen_final_at": time.perf_counter()}
        if len(final) < len(ids):
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs not final after {timeout_s:.0f} s (log: {service.log_path})")
            time.sleep(POLL_S)
    return final


def _clock(line: str) -> int | None:
    """Seconds since midnight of a job log line (`HH:MM:SS message`)."""
    try:
        h, m, s = (int(x) for x in line[:8].split(":"))
    except ValueError:
        return None
    return h * 3600 + m * 60 + s


def phases(service: Any, job: dict[str, Any]) -> dict[str, float | None]:
    """Where one job's time went: queue wait (ms resolution), then search, fetch, embed+select (1 s)."""
    lines = service.api("GET", f"/api/jobs/{job['id']}/log").json()["lines"]

    def at(marker: str) -> int | None:
        return next((_clock(line) for line in lines if marker in line), None)

    marks = [at("searching "), at(" candidates from "), at("all chunks fetched"), at("done: saved") or at("failed: ")]

    def span(a: int | None, b: int | None) -> float | None:
        return float((b - a) % 86400) if a is not None and b is not None else None

    created, started = (datetime.fromisoformat(job[k]) if job.get(k) else None for k in ("created_at", "started_at"))
    # The GPU worker logs "embedded N images in X s (...)" (newer workers): the embedding alone, to 0.1 s.
    embedded = next((m for line in lines if (m := EMBEDDED.search(line))), None)
    return {"queued_s": round((started - created).total_seconds(), 2) if created and started else None,
            "search_s": span(marks[0], marks[1]), "fetch_s": span(marks[1], marks[2]),
            "embed_select_s": span(marks[2], marks[3]), "embed_s": float(embedded.group(1)) if embedded else None}


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 2) if present else None


def _server_span(jobs: Sequence[dict[str, Any]]) -> float | None:
    """First created_at to last finished_at, by the database's clock."""
    try:
        first = min(datetime.fromisoformat(j["created_at"]) for j in jobs)
        last = max(datetime.fromisoformat(j["finished_at"]) for j in jobs)
    except (KeyError, TypeError, ValueError):
        return None
    return round((last - first).total_seconds(), 3)


# -- 1. throughput ----------------------------------------------------------------------------------

def warm_up(service: Any, urls: Sequence[str], tag: str) -> float:
    """One small untimed job, so the model loads and worker imports are not in the timed jobs."""
    with stopwatch() as watch:
        job_id = service.submit(query=QUERY, limit=5, source="urls", urls=list(urls[:LATENCY_JOB_URLS]),
                                output=f"{tag}-warmup")
        wait_all(service, [job_id], 300)
    return round(watch.seconds, 2)


def throughput(service: Any, jobs: int, limit: int, tag: str) -> dict[str, Any]:
    """K jobs at once; candidates and kept images per second from first submit to last done."""
    started = time.perf_counter()
    ids = [service.submit(query=QUERY, limit=limit, output=f"{tag}-job{i}") for i in range(jobs)]
    submitted = time.perf_counter() - started
    final = wait_all(service, ids, 1800)
    wall = max(j["seen_final_at"] for j in final.values()) - started
    ordered = [final[i] for i in ids]
    candidates = sum(j["progress"]["candidates"] or j["stage_counts"].get("candidates", 0) for j in ordered)
    kept = sum(j["count"] for j in ordered if j["status"] == "done")
    per_job = [{"status": j["status"], "error": j["error"], "candidates": j["progress"]["candidates"], "kept": j["count"],
                "fetch_chunks": j["fetch_chunks"].get("total"), "elapsed_s": j["elapsed_s"], **phases(service, j)}
               for j in ordered]
    return {
        "jobs": jobs, "limit": limit, "statuses": dict(Counter(j["status"] for j in ordered)),
        "submit_seconds": round(submitted, 3), "seconds": round(wall, 3), "server_span_seconds": _server_span(ordered),
        "jobs_per_minute": rate(60 * jobs, wall), "candidates": candidates, "kept": kept,
        "candidates_per_s": rate(candidates, wall), "kept_per_s": rate(kept, wall),
        "mean_phase_seconds": {k: _mean([p[k] for p in per_job])
                               for k in ("queued_s", "search_s", "fetch_s", "embed_select_s", "embed_s")},
        "per_job": per_job,
    }


# -- 2. overhead against cvdb build -----------------------------------------------------------------

def files_by_hash(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("img_*.jpg"))}


def one_job(service: Any, limit: int, tag: str) -> tuple[dict[str, Any], Path]:
    with stopwatch() as watch:
        job_id = service.submit(query=QUERY, limit=limit, output=f"{tag}-single")
        job = wait_all(service, [job_id], 1800)[job_id]
    result = {"status": job["status"], "error": job["error"], "seconds": round(watch.seconds, 3),
              "elapsed_s": job["elapsed_s"], "candidates": job["progress"]["candidates"], "kept": job["count"],
              **phases(service, job)}
    return result, service.data_root / job["output"]


def local_build(settings: dict[str, object], limit: int, data_root: Path, cvdb: str) -> tuple[dict[str, Any], Path]:
    """`cvdb build` as a user runs it (interpreter start and model load included)."""
    out = data_root / "local"
    env = {**os.environ, **{f"CVDB_{k.upper()}": str(v) for k, v in settings.items()}, "CVDB_DATA_ROOT": str(data_root)}
    with stopwatch() as watch:
        done = subprocess.run([cvdb, "build", QUERY, "--limit", str(limit), "--out", str(out)],
                              env=env, capture_output=True, text=True, timeout=1800)
    kept = len(list(out.glob("img_*.jpg"))) if out.exists() else 0
    return {"returncode": done.returncode, "seconds": round(watch.seconds, 3), "kept": kept,
            "stderr_tail": done.stderr[-400:] if done.returncode else None}, out


# -- 3. API latency under load ----------------------------------------------------------------------

class Load:
    """Closed-loop threads: submitters post small jobs, the others GET the list or one job, without pause."""

    def __init__(self, service: Any, urls: Sequence[str], known_ids: Sequence[str], tag: str) -> None:
        self.service, self.urls, self.tag = service, list(urls), tag
        self.ids: list[str] = list(known_ids)
        self.submitted: list[str] = []
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, Counter[str]] = defaultdict(Counter)
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def _timed(self, session: requests.Session, endpoint: str, method: str, path: str, **kw: Any) -> requests.Response | None:
        started = time.perf_counter()
        try:
            response = session.request(method, f"{self.service.url}{path}", timeout=30, **kw)
        except requests.RequestException as exc:
            with self.lock:
                self.errors[f"{endpoint}: {type(exc).__name__}"] += 1
            return None
        elapsed = time.perf_counter() - started
        with self.lock:
            self.latency[endpoint].append(elapsed)
            self.status[endpoint][str(response.status_code)] += 1
            if response.status_code >= 500:
                self.errors[f"{endpoint}: HTTP {response.status_code}"] += 1
        return response

    def submitter(self, index: int) -> None:
        session, n = requests.Session(), 0
        while not self.stop.is_set():
            urls = random.sample(self.urls, min(LATENCY_JOB_URLS, len(self.urls)))
            body = {"query": QUERY, "limit": 5, "source": "urls", "urls": urls, "output": f"{self.tag}-lat{index}-{n}"}
            response = self._timed(session, "POST /api/jobs", "POST", "/api/jobs", json=body)
            if response is not None and response.status_code == 202:
                with self.lock:
                    self.ids.append(response.json()["id"])
                    self.submitted.append(response.json()["id"])
            n += 1
            self.stop.wait(SUBMIT_INTERVAL_S)

    def lister(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            self._timed(session, "GET /api/jobs", "GET", "/api/jobs")

    def getter(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            with self.lock:
                job_id = random.choice(self.ids) if self.ids else None
            if job_id is None:
                time.sleep(0.05)
                continue
            self._timed(session, "GET /api/jobs/<id>", "GET", f"/api/jobs/{job_id}")


def percentiles_ms(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"requests": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(values) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"requests": len(values), "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1),
            "p99_ms": round(float(p99), 1), "max_ms": round(float(ms.max()), 1)}


def api_latency(service: Any, urls: Sequence[str], known_ids: Sequence[str], threads: int, duration_s: float,
                tag: str) -> dict[str, Any]:
    load = Load(service, urls, known_ids, tag)
    submitters = max(1, threads // 4)
    listers = max(1, (threads - submitters) // 2)
    getters = max(1, threads - submitters - listers)
    workers = ([threading.Thread(target=load.submitter, args=(i,)) for i in range(submitters)]
               + [threading.Thread(target=load.lister) for _ in range(listers)]
               + [threading.Thread(target=load.getter) for _ in range(getters)])
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(duration_s)
    load.stop.set()
    for worker in workers:
        worker.join(timeout=60)
    seconds = time.perf_counter() - started
    # Leave nothing running: cancel what has not finished, then wait for every small job to be final.
    cancelled = 0
    for job_id in load.submitted:
        if service.api("POST", f"/api/jobs/{job_id}/cancel").status_code == 202:
            cancelled += 1
    final = wait_all(service, load.submitted, 300)
    return {
        "threads": {"submit": submitters, "list": listers, "get": getters}, "seconds": round(seconds, 2),
        "submit_interval_s": SUBMIT_INTERVAL_S, "urls_per_small_job": LATENCY_JOB_URLS,
        "by_endpoint": {endpoint: {**percentiles_ms(values), "requests_per_s": rate(len(values), seconds),
                                   "status_codes": dict(load.status[endpoint])}
                        for endpoint, values in sorted(load.latency.items())},
        "errors": sum(load.errors.values()), "error_kinds": dict(load.errors),
        "small_jobs": {"submitted": len(load.submitted), "cancelled_after_load": cancelled,
                       "final_statuses": dict(Counter(j["status"] for j in final.values())),
                       "errors": dict(Counter(str(j["error"])[:200] for j in final.values() if j["status"] == "failed"))},
    }


# -- the section ------------------------------------------------------------------------------------

def run_service_bench(files: Sequence[Path], model_dir: Path, workers: Sequence[int], jobs: int, chunk_size: int,
                      latency_threads: int, latency_s: float, delay_s: float, log: Any) -> dict[str, Any]:
    """The whole section; `files` are served as the fake Naver's results (one query, every job)."""
    from bench.server import served

    h = harness()
    tag = f"bench{os.getpid()}"
    out: dict[str, Any] = {"images": len(files), "jobs": jobs, "cpu_workers": list(workers), "delay_s": delay_s,
                           "worker_concurrency": 1, "query": QUERY, "model": str(model_dir), "throughput": {}}
    with served(files, delay_s) as urls, FakeNaver(image_urls=urls) as naver, \
            tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        settings = service_settings(model_dir, naver, chunk_size)
        limit = job_limit(len(files), settings)
        out.update(limit=limit, settings={k: v for k, v in settings.items() if not k.startswith("naver_")})
        root = Path(tmp)
        for count in workers:
            service = h.Service(root / f"cpu{count}", settings, cpu_workers=count)
            try:
                with stopwatch() as start:
                    service.start()
                log(f"service: up with {count} CPU worker(s) in {start.seconds:.1f} s")
                warm = warm_up(service, urls, f"{tag}-w{count}")
                measured = throughput(service, jobs, limit, f"{tag}-w{count}")
                out["throughput"][f"cpu_workers_{count}"] = {"start_seconds": round(start.seconds, 2),
                                                             "warmup_seconds": warm, **measured}
                log(f"service: {count} CPU worker(s): {jobs} jobs in {measured['seconds']:.1f} s, "
                    f"{measured['candidates_per_s']} candidates/s, statuses {measured['statuses']}")
                if count == workers[-1]:
                    single, served_dir = one_job(service, limit, f"{tag}-w{count}")
                    local, local_dir = local_build(settings, limit, root / "local-data", h.CVDB)
                    out["overhead"] = {
                        "cpu_workers": count, "service": single, "local_build": local,
                        "same_kept_count": single["kept"] == local["kept"],
                        "same_files": files_by_hash(served_dir) == files_by_hash(local_dir),
                    }
                    log(f"service: one job {single['seconds']:.1f} s, cvdb build {local['seconds']:.1f} s, "
                        f"kept {single['kept']} vs {local['kept']}")
                    known = [j for j in (service.api("GET", "/api/jobs").json()["jobs"])]
                    out["api_latency"] = api_latency(service, urls, [j["id"] for j in known], latency_threads,
                                                     latency_s, f"{tag}-w{count}")
                    log(f"service: API latency load done, {out['api_latency']['errors']} errors")
            finally:
                service.stop()
    return out


def service_ratios(section: dict[str, Any]) -> dict[str, Any]:
    """Within-run ratios: N workers over 1 worker (candidates/s), service over `cvdb build` (wall time)."""
    out: dict[str, Any] = {}
    runs = section.get("throughput", {})
    base = runs.get("cpu_workers_1", {}).get("candidates_per_s")
    for name, run in runs.items():
        count = int(name.rsplit("_", 1)[1])
        if count != 1 and base:
            out[f"service_{count}_workers_over_1"] = round(run["candidates_per_s"] / base, 3)
    overhead = section.get("overhead", {})
    service_s = overhead.get("service", {}).get("seconds")
    local_s = overhead.get("local_build", {}).get("seconds")
    out["service_over_local_build_time"] = round(service_s / local_s, 3) if service_s and local_s else None
    return out
