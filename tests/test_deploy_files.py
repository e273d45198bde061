"""compose.yaml and the Dockerfiles, checked statically (no Docker engine needed).

The processes' commands must be exactly those of common/topology.py, so the Docker deployment and
`cvdb serve` cannot drift apart; the rest checks the wiring that `docker compose up` relies on.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from common import topology

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE_API = ROOT / "Dockerfile.api"
DOCKERFILE_GPU = ROOT / "Dockerfile.gpu-worker"

TORCH_PIN = "torch==2.13.0"

# Service -> the command topology.py gives it (called with default arguments).
EXPECTED_COMMANDS: dict[str, list[str]] = {
    "migrate": topology.MIGRATE,
    "api": topology.api(),
    "cpu-worker": topology.cpu_worker(),
    "gpu-worker": topology.gpu_worker(),
    "beat": topology.beat(),
    "flower": topology.flower(),
}
REQUIRED_SERVICES = {"postgres", "redis", *EXPECTED_COMMANDS}
AFTER_MIGRATE = ("api", "cpu-worker", "gpu-worker", "beat")
DATA_VOLUME_USERS = ("api", "cpu-worker", "gpu-worker", "beat")
WORKERS = ("cpu-worker", "gpu-worker")
APP_SERVICES = tuple(EXPECTED_COMMANDS)


# ---------------------------------------------------------------- helpers


def load_compose() -> dict[str, Any]:
    with COMPOSE.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return doc.get("services") or {}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition (the short list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Target path -> source, for both the short ("src:/dst[:ro]") and the long syntax."""
    mounts: dict[str, str] = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) >= 2:
                mounts[parts[1]] = parts[0]
        else:
            mounts[entry["target"]] = entry.get("source", "")
    return mounts


def command_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    for name, expected in EXPECTED_COMMANDS.items():
        actual = services(doc).get(name, {}).get("command")
        if actual != expected:
            problems.append(f"{name}: command {actual!r} != topology {expected!r}")
    return problems


def healthcheck_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    for name, service in services(doc).items():
        for dep, condition in depends_on(service).items():
            if dep not in services(doc):
                problems.append(f"{name} depends on unknown service {dep}")
                continue
            if condition == "service_healthy":
                check = services(doc)[dep].get("healthcheck")
                if not check or check.get("disable") or not check.get("test"):
                    problems.append(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
    return problems


class Dockerfile:
    """Instructions of a Dockerfile: comments dropped, continuation lines joined."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.instructions: list[tuple[str, str]] = []
        pending = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = pending + line
            pending = ""
            keyword, _, rest = line.partition(" ")
            self.instructions.append((keyword.upper(), rest.strip()))
        assert not pending, f"{path.name} ends in a continuation line"

    def all(self, keyword: str) -> list[str]:
        return [rest for key, rest in self.instructions if key == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"{self.path.name} has no {keyword}"
        return found[-1]

    def index(self, keyword: str, pattern: str) -> int:
        for i, (key, rest) in enumerate(self.instructions):
            if key == keyword and re.search(pattern, rest):
                return i
        raise AssertionError(f"{self.path.name}: no {keyword} matching {pattern!r}")

    def cmd(self) -> list[str]:
        text = self.last("CMD")
        assert text.startswith("["), f"{self.path.name}: CMD must be exec form (a JSON array)"
        return json.loads(text)

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for rest in self.all("ENV"):
            for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', rest):
                values[key] = value.strip('"')
        return values

    def run_text(self) -> str:
        return "\n".join(self.all("RUN"))


@pytest.fixture(scope="module", params=[DOCKERFILE_API, DOCKERFILE_GPU], ids=["api", "gpu-worker"])
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return Dockerfile(request.param)


# ---------------------------------------------------------------- compose.yaml


def test_required_services_exist(compose: dict[str, Any]) -> None:
    missing = REQUIRED_SERVICES - set(services(compose))
    assert not missing, f"compose.yaml lacks {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(EXPECTED_COMMANDS))
def test_command_is_the_topology_command(compose: dict[str, Any], name: str) -> None:
    assert services(compose)[name]["command"] == EXPECTED_COMMANDS[name]


def test_command_check_catches_a_drift(compose: dict[str, Any]) -> None:
    assert command_problems(compose) == []
    drifted = copy.deepcopy(compose)
    drifted["services"]["cpu-worker"]["command"] = topology.cpu_worker(concurrency=4)
    drifted["services"]["flower"]["command"] = " ".join(topology.flower())  # shell form
    problems = command_problems(drifted)
    assert len(problems) == 2 and problems[0].startswith("cpu-worker") and problems[1].startswith("flower")


def test_no_container_name(compose: dict[str, Any]) -> None:
    named = [name for name, service in services(compose).items() if "container_name" in service]
    assert not named, f"container_name breaks replicas and parallel projects: {named}"


def test_healthy_conditions_point_at_healthchecks(compose: dict[str, Any]) -> None:
    assert healthcheck_problems(compose) == []
    broken = copy.deepcopy(compose)
    del broken["services"]["redis"]["healthcheck"]
    assert any("redis has no healthcheck" in problem for problem in healthcheck_problems(broken))


def test_postgres_and_redis_healthchecks(compose: dict[str, Any]) -> None:
    postgres, redis = services(compose)["postgres"], services(compose)["redis"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "/var/lib/postgresql/data" in volume_mounts(postgres)
    assert volume_mounts(postgres)["/var/lib/postgresql/data"] in compose["volumes"]
    assert redis["image"].startswith("redis:7")
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    command = redis["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_migrate_runs_once_after_postgres(compose: dict[str, Any]) -> None:
    migrate = services(compose)["migrate"]
    assert depends_on(migrate).get("postgres") == "service_healthy"
    assert str(migrate.get("restart")) == "no"  # a completed migration must not be restarted


@pytest.mark.parametrize("name", AFTER_MIGRATE)
def test_waits_for_migrate_and_redis(compose: dict[str, Any], name: str) -> None:
    deps = depends_on(services(compose)[name])
    assert deps.get("migrate") == "service_completed_successfully"
    assert deps.get("redis") == "service_healthy"


def test_api_port_and_healthcheck(compose: dict[str, Any]) -> None:
    api = services(compose)["api"]
    assert f"{topology.API_PORT}:{topology.API_PORT}" in [str(port) for port in api["ports"]]
    test = api["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    joined = " ".join(test[1:])
    assert f"http://127.0.0.1:{topology.API_PORT}/healthz" in joined
    assert "curl" not in joined and "wget" not in joined, "python:3.11-slim has neither curl nor wget"


def test_gpu_worker_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    gpu = services(compose)["gpu-worker"]
    assert gpu["build"]["dockerfile"] == "Dockerfile.gpu-worker"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        device.get("driver") == "nvidia"
        and "gpu" in device.get("capabilities", [])
        and (device.get("count") in (1, "all") or device.get("device_ids"))
        for device in devices
    ), devices
    assert environment(gpu).get("CVDB_DEVICE") == "cuda"


def test_cpu_workers_are_replicated(compose: dict[str, Any]) -> None:
    assert int(services(compose)["cpu-worker"]["deploy"]["replicas"]) >= 2


def test_flower_requires_basic_auth(compose: dict[str, Any]) -> None:
    flower = services(compose)["flower"]
    value = environment(flower).get("FLOWER_BASIC_AUTH", "")
    # ${VAR:?message} makes `docker compose` refuse to start without it.
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:?\?[^}]*\}", value), value
    assert f"{topology.FLOWER_PORT}:{topology.FLOWER_PORT}" in [str(port) for port in flower["ports"]]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_share_the_environment(compose: dict[str, Any], name: str) -> None:
    env = environment(services(compose)[name])
    assert env["CVDB_DATABASE_URL"] == (
        "postgresql+psycopg2://postgres:${POSTGRES_PASSWORD:-cvdb}@postgres:5432/cvdb"
    )
    assert env["CVDB_REDIS_URL"] == "redis://redis:6379/0"
    assert env["CVDB_DATA_ROOT"] == "/data"
    assert env["CVDB_API_TOKENS"] == "${CVDB_API_TOKENS:-}"


def test_app_services_use_the_app_image(compose: dict[str, Any]) -> None:
    for name in ("migrate", "api", "cpu-worker", "beat", "flower"):
        assert services(compose)[name]["build"]["dockerfile"] == "Dockerfile.api", name


def test_data_volume_is_one_named_volume(compose: dict[str, Any]) -> None:
    sources = {name: volume_mounts(services(compose)[name]).get("/data") for name in DATA_VOLUME_USERS}
    assert None not in sources.values(), f"services without /data: {sources}"
    assert len(set(sources.values())) == 1, f"/data comes from different volumes: {sources}"
    (volume,) = set(sources.values())
    assert volume in (compose.get("volumes") or {}), f"{volume} is not a named volume"


@pytest.mark.parametrize("name", WORKERS)
def test_workers_keep_a_hugging_face_cache(compose: dict[str, Any], name: str) -> None:
    service = services(compose)[name]
    home = environment(service).get("HF_HOME")
    assert home == "/cache/huggingface"
    assert volume_mounts(service).get(home) in (compose.get("volumes") or {})


def test_compose_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    """Runs where check-jsonschema (which vendors the compose-spec schema) is installed."""
    pytest.importorskip("check_jsonschema")
    import importlib.resources

    import jsonschema

    schema_file = importlib.resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator.iter_errors(compose)]
    assert not errors, errors


# ---------------------------------------------------------------- Dockerfiles


def test_api_image_base_and_command() -> None:
    dockerfile = Dockerfile(DOCKERFILE_API)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", dockerfile.all("FROM")[0]), dockerfile.all("FROM")
    assert dockerfile.cmd() == topology.api()
    assert str(topology.API_PORT) in dockerfile.last("EXPOSE").split()


def test_gpu_image_base_and_command() -> None:
    dockerfile = Dockerfile(DOCKERFILE_GPU)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", dockerfile.all("FROM")[0])
    assert dockerfile.cmd() == topology.gpu_worker()
    assert dockerfile.env().get("CVDB_DEVICE") == "cuda"


def test_api_image_installs_chromium_and_cpu_torch() -> None:
    dockerfile = Dockerfile(DOCKERFILE_API)
    apt = next(run for run in dockerfile.all("RUN") if "apt-get install" in run)
    assert "--no-install-recommends" in apt
    assert re.search(r"\bchromium\b", apt) and re.search(r"\bchromium-driver\b", apt)
    torch = dockerfile.index("RUN", re.escape(TORCH_PIN))
    assert "https://download.pytorch.org/whl/cpu" in dockerfile.instructions[torch][1]
    assert torch < dockerfile.index("RUN", r"pip install .*(?<![\w/-])\.(\s|$)")


def test_gpu_image_installs_cuda_torch() -> None:
    dockerfile = Dockerfile(DOCKERFILE_GPU)
    torch = dockerfile.index("RUN", re.escape(TORCH_PIN))
    run = dockerfile.instructions[torch][1]
    index = re.search(r"--index-url\s+(\S+)", run)
    assert index, run
    url = index.group(1).strip("\"'")
    if url.startswith("$"):  # a build argument: check its default
        name = url.strip("${}")
        default = next(rest for rest in dockerfile.all("ARG") if rest.startswith(f"{name}="))
        url = default.split("=", 1)[1].strip("\"'")
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", url), url
    assert torch < dockerfile.index("RUN", r"pip install .*(?<![\w/-])\.(\s|$)")


def test_dockerfile_pins_torch(dockerfile: Dockerfile) -> None:
    pins = re.findall(r"torch==[\w.+]+", dockerfile.run_text())
    assert pins == [TORCH_PIN], pins
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"{TORCH_PIN}"' in pyproject, "the images and pyproject.toml must pin the same torch"


def test_dockerfile_runs_as_non_root(dockerfile: Dockerfile) -> None:
    user = dockerfile.last("USER").split(":")[0]
    assert user not in ("root", "0"), user
    # USER comes after every RUN that needs root, and before the command.
    last_user = max(i for i, (key, _) in enumerate(dockerfile.instructions) if key == "USER")
    assert last_user > max(i for i, (key, _) in enumerate(dockerfile.instructions) if key == "RUN")


def test_dockerfile_data_volume_and_workdir(dockerfile: Dockerfile) -> None:
    assert dockerfile.last("WORKDIR") == "/app"
    assert dockerfile.env().get("CVDB_DATA_ROOT") == "/data"
    volumes = " ".join(dockerfile.all("VOLUME"))
    assert "/data" in volumes
    assert re.search(r"chown\b.*\s/data\b", dockerfile.run_text()), "/data must be writable by the user"


def test_dockerfile_layers_and_migrations(dockerfile: Dockerfile) -> None:
    copies = dockerfile.all("COPY")
    assert any("pyproject.toml" in c for c in copies)
    pyproject_at = dockerfile.index("COPY", r"pyproject\.toml")
    for package in ("api", "workers", "common", "migrations"):
        assert dockerfile.index("COPY", rf"(^|\s){package}/?\s") > pyproject_at, package
    # `pip install .` does not ship migrations/ and api/__init__.py looks for it next to the api
    # package: the code must be imported from /app, where migrations/ was copied.
    assert dockerfile.env().get("PYTHONPATH") == "/app"
