"""The service's processes and their exact commands: compose.yaml and `cvdb serve` both run these.

One place defines them so the Docker deployment and the native launcher cannot drift apart;
a test checks compose.yaml against this module.
"""

from __future__ import annotations

API_PORT = 8000
FLOWER_PORT = 5555
CPU_CONCURRENCY = 2

# Started first, once, before anything else; the others need the tables.
MIGRATE = ["flask", "--app", "api.wsgi", "db", "upgrade"]


def api(bind: str = f"0.0.0.0:{API_PORT}") -> list[str]:
    return ["gunicorn", "--bind", bind, "--workers", "2", "--threads", "4", "--timeout", "60",
            "--access-logfile", "-", "api.wsgi:app"]


def cpu_worker(node: str = "cpu", concurrency: int = CPU_CONCURRENCY) -> list[str]:
    """Search and fetch: prefork, one task per process at a time, acknowledged after the work."""
    return ["celery", "-A", "workers.app", "worker", "-Q", "cpu", "-P", "prefork", "-c", str(concurrency),
            "--prefetch-multiplier", "1", "-n", f"{node}@%h", "-E", "--loglevel", "INFO"]


def gpu_worker(node: str = "gpu") -> list[str]:
    """Embedding and selection: a pool of one process that loads the model once (CUDA is first
    touched there, after the fork); the parent can stop a hung step and replace a dead process."""
    return ["celery", "-A", "workers.app", "worker", "-Q", "gpu", "-P", "prefork", "-c", "1",
            "--prefetch-multiplier", "1", "-n", f"{node}@%h", "-E", "--loglevel", "INFO"]


def beat() -> list[str]:
    """Schedules the sweep that fails jobs whose worker died."""
    return ["celery", "-A", "workers.app", "beat", "--loglevel", "INFO"]


def flower(port: int = FLOWER_PORT) -> list[str]:
    """Monitoring; FLOWER_BASIC_AUTH=user:password in the environment turns on its login."""
    return ["celery", "-A", "workers.app", "flower", f"--port={port}"]
