"""`cvdb serve`'s plan and command resolution (the processes themselves run in test_service)."""

from __future__ import annotations

import sys
from pathlib import Path

from common import serve, topology


def test_plan_is_the_compose_topology_with_numbered_cpu_workers() -> None:
    processes = serve.plan(cpu_workers=3, concurrency=2, bind="127.0.0.1:9000", flower=True, beat=True,
                           flower_port=5600)
    assert [p.name for p in processes] == ["api", "cpu-1", "cpu-2", "cpu-3", "gpu", "beat", "flower"]
    assert processes[0].argv == topology.api("127.0.0.1:9000")
    assert processes[2].argv == topology.cpu_worker("cpu-2", 2)
    assert processes[-1].argv == topology.flower(5600)
    assert [p.name for p in serve.plan(1, 1, "127.0.0.1:9000", flower=False, beat=False)] == ["api", "cpu-1", "gpu"]


def test_commands_run_from_this_environment_even_when_it_is_not_activated() -> None:
    resolved = serve.resolve(topology.gpu_worker())
    assert resolved[0] == str(Path(sys.executable).parent / "celery")
    assert resolved[1:] == topology.gpu_worker()[1:]
    assert serve.resolve(["no-such-program-xyz", "--flag"]) == ["no-such-program-xyz", "--flag"]
