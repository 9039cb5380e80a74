"""The deployment files: both Dockerfile images (base, user, entry point, healthcheck, locked
dependencies), the lock files against pyproject, and docker-compose.yml validated by the Compose CLI."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

from .helpers import REPO_ROOT

ML_STACK = {"torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "gguf"}
COMPOSE_INSTALL_HINT = (
    "docker-compose.yml cannot be validated: neither `docker compose` (the Compose plugin) nor "
    "`docker-compose` is installed. On Debian: apt-get install docker-compose"
)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [value for name, value in self.instructions if name == keyword]
        return values[-1] if values else None

    def all(self, keyword: str) -> list[str]:
        return [value for name, value in self.instructions if name == keyword]


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name: FROM's base (ARG defaults substituted) and each instruction, continuations joined."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    bases = iter(parser.parent_images)  # one per FROM, in order, with ARG defaults substituted
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        keyword, value = item["instruction"], item["value"]
        if keyword == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage-{len(stages)}"
            current = stages[name] = Stage(name=name, base=next(bases))
        elif current is not None and keyword != "COMMENT":
            current.instructions.append((keyword, value.strip()))
    return stages


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, down to an external image."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def effective(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """An instruction's value as the image sees it (the nearest stage in its lineage that sets it)."""
    for stage in lineage(stages, name):
        value = stage.last(keyword)
        if value is not None:
            return value
    return None


def locked(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def copied_requirements(stages: dict[str, Stage], image: str) -> dict[str, str]:
    """The lock file installed into the virtualenv that `image` copies from its deps stage."""
    sources = [value.split()[0].removeprefix("--from=") for value in stages[image].all("COPY") if "--from=" in value]
    deps = next(stages[source] for source in sources if source.endswith("-deps"))
    copied = next(value.split()[0] for value in deps.all("COPY") if value.startswith("requirements/"))
    assert any("-r /tmp/requirements.txt" in run for run in deps.all("RUN"))
    return locked(REPO_ROOT / copied)


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile((REPO_ROOT / "Dockerfile").read_text())


@pytest.mark.parametrize("image", ["api", "worker"])
def test_both_images_run_leap_as_an_unprivileged_user_with_a_healthcheck(stages, image):
    assert lineage(stages, image)[-1].base == "python:3.11-slim-bookworm"
    user = effective(stages, image, "USER")
    assert user not in (None, "root", "0")
    assert any("useradd" in run and f" {user}" in run and "--uid 10001" in run for run in stages["base"].all("RUN"))
    assert json.loads(effective(stages, image, "ENTRYPOINT") or "null") == ["leap"]
    healthcheck = effective(stages, image, "HEALTHCHECK")
    assert healthcheck and "CMD" in healthcheck
    assert any("--editable ." in run and "--no-deps" in run for run in stages[image].all("RUN"))


def test_the_api_image_is_slim_and_the_worker_image_has_torch_with_cuda(stages):
    api = copied_requirements(stages, "api")
    worker = copied_requirements(stages, "worker")
    assert not [name for name in api if name in ML_STACK or name.startswith(("nvidia-", "cuda-", "triton"))]
    assert worker["torch"] == "2.13.0" and "+cpu" not in worker["torch"]
    assert any(name.startswith("nvidia-cuda-runtime") for name in worker), "torch's CUDA wheels are not locked"
    assert json.loads(stages["api"].last("CMD") or "null")[0] == "api"
    assert json.loads(stages["worker"].last("CMD") or "null")[:3] == ["worker", "--queues", "gpu"]
    assert "/healthz" in (stages["api"].last("HEALTHCHECK") or "")
    assert "inspect ping" in (stages["worker"].last("HEALTHCHECK") or "")


def test_the_locks_pin_what_pyproject_asks_for():
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    api = locked(REPO_ROOT / "requirements" / "api.txt")
    worker = locked(REPO_ROOT / "requirements" / "worker.txt")
    for line in dependencies:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in worker and requirement.specifier.contains(worker[name]), (line, worker.get(name))
        if name not in ML_STACK:
            assert name in api and requirement.specifier.contains(api[name]), (line, api.get(name))
    shared = set(api) & set(worker)
    assert {name: api[name] for name in shared} == {name: worker[name] for name in shared}


BLOCK_ML_STACK = """
import sys
for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors"):
    sys.modules[name] = None  # as in the API image, where they are not installed
from app.main import create_app
import workers.trainings, workers.sweeper
create_app().openapi()
sys.argv = ["leap", *sys.argv[1:]]
from app.cli import main
main()
"""


@pytest.mark.parametrize("command", [["--help"], ["api", "--help"], ["submit", "--help"], ["worker", "--help"]])
def test_the_api_image_entry_point_works_without_the_ml_stack(command, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_ML_STACK, *command],
        cwd=REPO_ROOT,
        env={"LEAP_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def compose_cli() -> list[str]:
    """`docker compose` where the plugin is installed, else `docker-compose`; fails (never skips) without."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.fail(COMPOSE_INSTALL_HINT)


def test_compose_file_is_valid_for_the_compose_cli():
    profiles = ["--profile", "gpu", "--profile", "cpu"]
    result = subprocess.run(
        [
            *compose_cli(),
            "--project-directory",
            str(REPO_ROOT),
            "-f",
            str(REPO_ROOT / "docker-compose.yml"),
            *profiles,
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())  # PyYAML resolves the << merges


def test_compose_runs_the_whole_stack_with_healthchecks_and_ordered_starts(compose):
    services = compose["services"]
    assert set(services) >= {
        "postgres",
        "redis",
        "minio",
        "createbucket",
        "migrate",
        "api",
        "worker",
        "worker-cpu",
        "sweeper",
        "flower",
    }
    for name, service in services.items():
        if name not in ("createbucket", "migrate"):
            assert "healthcheck" in service or name.startswith("worker"), name  # workers: the image's
    for name in ("api", "worker", "worker-cpu", "sweeper"):
        conditions = {dependency: rule["condition"] for dependency, rule in services[name]["depends_on"].items()}
        assert conditions == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "createbucket": "service_completed_successfully",
            "migrate": "service_completed_successfully",
        }, name
    assert services["createbucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing local/leap" in services["createbucket"]["command"][0]
    assert services["migrate"]["command"] == ["migrate"]
    assert "--beat" in services["sweeper"]["command"] and "maintenance" in services["sweeper"]["command"]
    assert services["flower"]["command"][-2] == "flower"
    assert set(compose["volumes"]) >= {"pgdata", "redisdata", "miniodata", "models"}


def test_compose_reserves_a_gpu_for_the_worker_with_a_cpu_profile_as_fallback(compose):
    services = compose["services"]
    worker, fallback = services["worker"], services["worker-cpu"]
    assert worker["build"]["target"] == fallback["build"]["target"] == "worker"
    assert services["api"]["build"]["target"] == services["sweeper"]["build"]["target"] == "api"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["profiles"] == ["gpu"] and fallback["profiles"] == ["cpu"]
    assert "deploy" not in fallback
    assert worker["command"] == fallback["command"] == ["worker", "--queues", "gpu", "--concurrency", "1"]
    assert worker["environment"]["LEAP_PRELOAD_MODELS"] == "1"


def test_compose_and_dockerfile_agree_on_the_entry_point(stages, compose):
    # Compose passes commands to the images' `leap` entry point: each must be a leap command.
    commands = {"api", "worker", "migrate"}
    for name in ("api", "migrate", "sweeper", "worker", "worker-cpu"):
        assert compose["services"][name]["command"][0] in commands, name
    healthcheck = " ".join(compose["services"]["sweeper"]["healthcheck"]["test"])
    assert "leap-maintenance@" in healthcheck and shlex.split(healthcheck)[0] == "CMD-SHELL"
