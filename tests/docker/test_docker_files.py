"""Container and deployment files: static checks (no Docker engine needed) and the serving image's
entrypoint run on the host.

The static tests read docker/Dockerfile, docker/Dockerfile.train, .dockerignore,
docker-compose.yml, the Prometheus and Grafana provisioning and docker/k8s/*, and hold them to what
the code really is: ``Settings`` fields, the ``rdad_*`` metrics the service registers, the console
script in pyproject, the CUDA version the installed onnxruntime-gpu was built for. The last test
runs the image's exact command line (``rdad serve`` with the compose environment) with torch made
unimportable, as in the image, against a tiny real model, and stops it with SIGTERM.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from rdad.service.settings import Settings
from tests.processes import free_port

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
COMPOSE_FILE = REPO / "docker-compose.yml"
PROMETHEUS_FILE = DOCKER / "prometheus" / "prometheus.yml"
GRAFANA = DOCKER / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "rdad.json"

SETTINGS_ENV = {f"RDAD_{name.upper()}" for name in Settings.model_fields}
RDAD_VAR = re.compile(r"\bRDAD_[A-Z0-9_]+\b")
# Labels Prometheus itself attaches to scraped series (job/instance) or prometheus.yml adds.
TARGET_LABELS = {"job", "instance", "service"}


# --- parsing helpers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int  # index of the FROM it belongs to; -1 before the first FROM
    name: str  # upper case: FROM, RUN, ENV, ...
    args: str


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    instructions: tuple[Instruction, ...]

    @property
    def global_args(self) -> dict[str, str]:
        """``ARG NAME=default`` before the first FROM (usable in FROM lines)."""
        out = {}
        for ins in self.instructions:
            if ins.stage == -1 and ins.name == "ARG" and "=" in ins.args:
                key, value = ins.args.split("=", 1)
                out[key.strip()] = value.strip().strip('"')
        return out

    @property
    def stages(self) -> list[tuple[str, str | None]]:
        """``(image, alias)`` per FROM, ARGs substituted."""
        args = self.global_args
        out = []
        for ins in self.instructions:
            if ins.name == "FROM":
                parts = ins.args.split()
                image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
                alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
                out.append((image, alias))
        return out

    @property
    def final_stage(self) -> int:
        return len(self.stages) - 1

    def stage_index(self, alias: str) -> int:
        return [a for _, a in self.stages].index(alias)

    def get(self, name: str, stage: int | None = None) -> list[str]:
        return [
            ins.args
            for ins in self.instructions
            if ins.name == name and (stage is None or ins.stage == stage)
        ]

    def env(self, stage: int | None = None) -> dict[str, str]:
        stage = self.final_stage if stage is None else stage
        out: dict[str, str] = {}
        for args in self.get("ENV", stage):
            for token in shlex.split(args):
                assert "=" in token, f"{self.path.name}: use ENV KEY=VALUE, got {token!r}"
                key, value = token.split("=", 1)
                out[key] = value
        return out

    def exec_form(self, name: str) -> list[str]:
        values = self.get(name, self.final_stage)
        assert values, f"{self.path.name}: no {name} in the final stage"
        parsed = json.loads(values[-1])
        assert isinstance(parsed, list), f"{self.path.name}: {name} must use the JSON (exec) form"
        return [str(part) for part in parsed]

    def healthcheck(self) -> tuple[str, list[str]]:
        """``(options, argv)`` of the final stage's HEALTHCHECK (shell form runs via sh -c)."""
        values = self.get("HEALTHCHECK", self.final_stage)
        assert values, f"{self.path.name}: no HEALTHCHECK"
        options, sep, command = values[-1].partition("CMD ")
        assert sep, f"{self.path.name}: HEALTHCHECK without CMD"
        command = command.strip()
        if command.startswith("["):
            return options, [str(part) for part in json.loads(command)]
        return options, ["/bin/sh", "-c", command]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Logical instructions: continuation lines joined, comment lines dropped (as Docker does)."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        logical.append((buf + line).strip())
        buf = ""
    assert not buf, f"{path.name}: ends in a line continuation"
    instructions = []
    stage = -1
    for line in logical:
        if "<<" in line:
            raise AssertionError(f"{path.name}: heredocs are not supported by this parser: {line}")
        name, _, args = line.partition(" ")
        name = name.upper()
        if name == "FROM":
            stage += 1
        instructions.append(Instruction(stage, name, args.strip()))
    return Dockerfile(path, tuple(instructions))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def interpolate(value: str) -> str:
    """Compose ``${VAR:-default}`` / ``${VAR}`` with nothing set: the default (or empty)."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """The environment a compose service gets when the shell sets nothing (null = unset)."""
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form for environment"
    return {k: interpolate(str(v)) for k, v in env.items() if v is not None}


def duration_s(value: str | int | float) -> float:
    """Compose durations: ``35s``, ``1m30s``, ``500ms``."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def k8s_docs() -> dict[str, dict[str, Any]]:
    """``kind -> manifest`` for the manifests listed in the kustomization."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    docs = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                assert doc["kind"] not in docs, f"two {doc['kind']} manifests"
                docs[doc["kind"]] = doc
    return docs


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container per pod: rdad serve"
    return containers[0]


def k8s_env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container(deployment)["env"] if "value" in e}


def load_check_image() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_image", DOCKER / "check_image.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower() for req in requirements}


def effective_value(env: dict[str, str], field: str) -> float:
    """A setting as the service would see it: the variable if set, else the Settings default."""
    name = f"RDAD_{field.upper()}"
    return float(env[name]) if name in env else float(Settings.model_fields[field].default)


@pytest.fixture(scope="module")
def serve_df() -> Dockerfile:
    return parse_dockerfile(DOCKER / "Dockerfile")


@pytest.fixture(scope="module")
def train_df() -> Dockerfile:
    return parse_dockerfile(DOCKER / "Dockerfile.train")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def api(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]["api"]


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return k8s_docs()


@pytest.fixture
def no_torch(tmp_path: Path) -> Path:
    """A PYTHONPATH entry that makes torch and torchvision unimportable, as in the serving image."""
    folder = tmp_path / "no-torch"
    folder.mkdir()
    for name in ("torch", "torchvision"):
        (folder / f"{name}.py").write_text(
            f"raise ImportError('{name} is not installed in the serving image')\n"
        )
    return folder


def container_port(service: dict[str, Any]) -> int:
    (mapping,) = service["ports"]
    return int(str(mapping).rsplit(":", 1)[-1].split("/")[0])


# --- Dockerfiles --------------------------------------------------------------------------------


def test_serving_image_installs_only_the_serve_lock(serve_df: Dockerfile) -> None:
    final_runs = serve_df.get("RUN", serve_df.final_stage)
    installs = [run for run in final_runs if "pip install" in run]
    assert installs, "the runtime stage installs nothing"
    (install,) = installs
    assert "source=requirements/serve.lock" in install, "the serving image installs the serve lock"
    for run in serve_df.get("RUN"):
        for banned in ("torch", "[train]", "[dev]", "train.lock", "dev.lock"):
            assert banned not in run, f"serving image RUN mentions {banned!r}: {run}"
    extras = pyproject()["project"]["optional-dependencies"]
    serve = requirement_names(extras["serve"]) | requirement_names(
        pyproject()["project"]["dependencies"]
    )
    assert not serve & {"torch", "torchvision"}, "the serve extra must not pull torch"
    assert "onnxruntime-gpu" in serve


def test_images_build_the_wheel_in_a_builder_stage(
    serve_df: Dockerfile, train_df: Dockerfile
) -> None:
    for df in (serve_df, train_df):
        builder = df.stage_index("builder")
        assert builder < df.final_stage
        assert any("pip wheel" in run for run in df.get("RUN", builder)), df.path.name
        runtime_runs = df.get("RUN", df.final_stage)
        assert any("from=builder" in run and "/wheels" in run for run in runtime_runs), (
            f"{df.path.name}: the runtime stage must install the builder's wheel"
        )
        assert not df.get("COPY", df.final_stage), f"{df.path.name}: no sources in the runtime"


def test_serving_base_image_carries_the_cuda_of_onnxruntime_gpu(serve_df: Dockerfile) -> None:
    image, _ = serve_df.stages[serve_df.final_stage]
    repo, _, tag = image.partition(":")
    assert repo == "nvidia/cuda", image
    assert "cudnn" in tag and "runtime" in tag, f"{image}: needs the cuDNN runtime flavour"
    check_image = load_check_image()
    base_major = int(tag.split(".")[0])
    ort_major = check_image.onnxruntime_cuda_major()
    assert base_major == ort_major, (
        f"{image} has CUDA {base_major}, the installed onnxruntime-gpu is built for CUDA "
        f"{ort_major}: pip would install the same wheel into the image"
    )


def test_image_check_library_names_match_the_cuda_wheels() -> None:
    """The sonames docker/check_image.py loads exist in NVIDIA's CUDA/cuDNN pip wheels (installed
    with torch) for the same major version: a typo would fail every image build."""
    check_image = load_check_image()
    import onnxruntime

    site = Path(onnxruntime.__file__).resolve().parents[1] / "nvidia"
    available = {p.name for p in site.rglob("*.so*")}
    for soname in check_image.cuda_libraries(check_image.onnxruntime_cuda_major()):
        assert soname in available, f"{soname} not among the CUDA wheels' libraries in {site}"


def test_image_check_rejects_torch() -> None:
    check_image = load_check_image()
    assert importlib.util.find_spec("torch") is not None  # the host has the train extra
    with pytest.raises(check_image.ImageCheckError, match="torch"):
        check_image.check_no_torch()
    assert check_image.main(["serve"]) == 1
    assert check_image.main(["nonsense"]) == 2


def test_images_run_python_311(serve_df: Dockerfile, train_df: Dockerfile) -> None:
    requires = pyproject()["project"]["requires-python"]
    assert requires.startswith(">=3.11"), requires
    for df in (serve_df, train_df):
        assert df.global_args["PYTHON_VERSION"] == "3.11", df.path.name
        assert df.stages[df.stage_index("builder")][0] == "python:3.11-slim-bookworm"


def test_images_run_as_non_root(serve_df: Dockerfile, train_df: Dockerfile) -> None:
    for df in (serve_df, train_df):
        users = df.get("USER", df.final_stage)
        assert users, f"{df.path.name}: no USER in the final stage"
        user, _, group = users[-1].partition(":")
        assert user not in ("root", "0") and group not in ("root", "0"), users[-1]
        assert user.isdigit(), "numeric USER: Kubernetes runAsNonRoot can only verify a number"


def test_serving_image_healthcheck_and_signals(serve_df: Dockerfile) -> None:
    options, argv = serve_df.healthcheck()
    assert argv[0] == "python", "the image has python, not curl"
    assert "/healthz" in argv[-1] and "urllib" in argv[-1]
    assert not re.search(r"\b(curl|wget)\b", " ".join(argv))
    assert "--start-period=" in options, "warm-up needs a start period"
    assert serve_df.get("STOPSIGNAL", serve_df.final_stage) == ["SIGTERM"]


def test_serving_image_exposes_the_service_port(serve_df: Dockerfile) -> None:
    env = serve_df.env()
    assert serve_df.get("EXPOSE", serve_df.final_stage) == [env["RDAD_PORT"]] == ["8000"]
    assert env["RDAD_HOST"] == "0.0.0.0"
    assert env["RDAD_MODEL_DIR"] == "/models"


def test_entrypoints_are_the_console_script(serve_df: Dockerfile, train_df: Dockerfile) -> None:
    scripts = pyproject()["project"]["scripts"]
    assert scripts["rdad"] == "rdad.cli:main"
    assert serve_df.exec_form("ENTRYPOINT") == ["rdad", "serve"]
    assert serve_df.exec_form("CMD") == []
    assert train_df.exec_form("ENTRYPOINT") == ["rdad"]
    assert Path(sys.executable).with_name("rdad").exists(), "rdad console script not installed"


def test_rdad_serve_help_runs_without_torch(no_torch: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(no_torch)}
    done = subprocess.run(
        [sys.executable, "-m", "rdad", "serve", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: rdad serve" in done.stdout and "--grace-period-s" in done.stdout


def test_training_image_installs_the_train_lock(train_df: Dockerfile) -> None:
    installs = [run for run in train_df.get("RUN", train_df.final_stage) if "pip install" in run]
    (install,) = installs
    assert "source=requirements/train.lock" in install
    assert "serve.lock" not in install and "dev.lock" not in install
    train = pyproject()["project"]["optional-dependencies"]["train"]
    assert "torch==2.14.1" in train and "torchvision==0.29.1" in train


def test_dockerignore_keeps_data_out_and_sources_in(
    serve_df: Dockerfile, train_df: Dockerfile
) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "this matcher has no exceptions"

    def matches(parts: list[str], pattern: list[str]) -> bool:
        """Docker's rules: ``*`` stays within one path segment, ``**`` spans any number."""
        if not pattern:
            return not parts
        if pattern[0] == "**":
            return any(matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatchcase(parts[0], pattern[0]) and matches(parts[1:], pattern[1:])

    def ignored(path: str) -> bool:
        """A path is out of the context when a pattern matches it or one of its folders."""
        parts = path.split("/")
        return any(
            matches(parts[:n], pattern.split("/"))
            for pattern in patterns
            for n in range(1, len(parts) + 1)
        )

    must_ignore = [
        ".venv/bin/python",
        ".git/HEAD",
        "runs/bottle/checkpoint.pt",
        "datasets/a.png",
        "models/bottle.onnx",
        "service/stray.onnx",
        "model/__pycache__/a.cpython-311.pyc",
        ".pytest_cache/x",
        ".mypy_cache/x",
        ".ruff_cache/x",
        "tests/conftest.py",
    ]
    for path in must_ignore:
        assert ignored(path), f".dockerignore lets {path} into the build context"

    for df in (serve_df, train_df):
        sources = []
        for args in df.get("COPY"):
            if "--from" not in args:
                sources += args.split()[:-1]
        for run in df.get("RUN"):
            sources += re.findall(r"--mount=type=bind,source=([^,\s]+)", run)
        assert sources
        for source in sources:
            path = source.rstrip("/")
            assert (REPO / path).exists(), f"{df.path.name}: {source} does not exist"
            assert not ignored(path), f"{df.path.name} needs {source}, .dockerignore drops it"


# --- settings named in the files ----------------------------------------------------------------


def deployment_files() -> list[Path]:
    return [
        DOCKER / "Dockerfile",
        DOCKER / "Dockerfile.train",
        COMPOSE_FILE,
        *sorted(K8S.rglob("*.yaml")),
    ]


def test_every_rdad_variable_is_a_setting() -> None:
    assert "RDAD_GRACE_PERIOD_S" in SETTINGS_ENV and "RDAD_MODEL_DIR" in SETTINGS_ENV
    named = set()
    for path in deployment_files():
        found = set(RDAD_VAR.findall(path.read_text()))
        unknown = found - SETTINGS_ENV
        assert not unknown, f"{path.relative_to(REPO)}: {sorted(unknown)} are not Settings fields"
        named |= found
    assert {"RDAD_HOST", "RDAD_PORT", "RDAD_MODEL_DIR", "RDAD_GRACE_PERIOD_S"} <= named


@pytest.mark.parametrize("source", ["Dockerfile", "compose", "k8s"])
def test_rdad_values_are_valid_settings(
    source: str,
    serve_df: Dockerfile,
    api: dict[str, Any],
    k8s: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "Dockerfile": serve_df.env(),
        "compose": compose_env(api),
        "k8s": k8s_env(k8s["Deployment"]),
    }[source]
    rdad = {k: v for k, v in env.items() if k.startswith("RDAD_")}
    assert rdad
    for key in list(os.environ):
        if key.startswith("RDAD_"):
            monkeypatch.delenv(key)
    for key, value in rdad.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert str(settings.model_dir) == "/models"
    assert settings.port == 8000


# --- compose ------------------------------------------------------------------------------------


def test_compose_api_service(api: dict[str, Any], serve_df: Dockerfile) -> None:
    assert api["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}
    assert "profiles" not in api, "api starts with a plain `docker compose up`"
    port = container_port(api)
    assert [str(port)] == serve_df.get("EXPOSE", serve_df.final_stage)
    assert compose_env(api)["RDAD_PORT"] == str(port)
    assert compose_env(api)["RDAD_HOST"] == "0.0.0.0"
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    model_dir = compose_env(api)["RDAD_MODEL_DIR"]
    assert f"./models:{model_dir}:ro" in api["volumes"]
    assert api["restart"] == "unless-stopped"
    assert api.get("stop_signal", "SIGTERM") == "SIGTERM"
    test = api["healthcheck"]["test"]
    assert test[0] == "CMD" and "/healthz" in " ".join(test) and "curl" not in " ".join(test)
    assert duration_s(api["healthcheck"]["start_period"]) >= 60


def test_an_empty_model_folder_cannot_make_a_restart_loop(
    api: dict[str, Any], serve_df: Dockerfile, k8s: dict[str, dict[str, Any]]
) -> None:
    """Docker restarts a container that exits (restart: unless-stopped) or fails its health check,
    Kubernetes one that exits or fails its liveness/startup probe. So every deployment keeps model
    polling on (an empty or broken model folder then leaves the service up, waiting, instead of
    exiting) and checks liveness on /healthz, which stays 200 while /readyz says 503."""
    deployment = k8s["Deployment"]
    envs = {
        "image": {k: v for k, v in serve_df.env().items() if k.startswith("RDAD_")},
        "compose": {**serve_df.env(), **compose_env(api)},
        "k8s": {**serve_df.env(), **k8s_env(deployment)},
    }
    for where, env in envs.items():
        assert effective_value(env, "model_poll_s") > 0, f"{where}: RDAD_MODEL_POLL_S is off"
    assert api["restart"] in ("unless-stopped", "always", "on-failure")
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    _, argv = serve_df.healthcheck()
    assert "/healthz" in argv[-1]
    spec = deployment["spec"]["template"]["spec"]
    assert spec.get("restartPolicy", "Always") == "Always"
    pod = container(deployment)
    assert pod["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_compose_stop_grace_period_outlasts_the_drain(api: dict[str, Any]) -> None:
    env = compose_env(api)
    service_s = effective_value(env, "grace_period_s") + effective_value(env, "drain_delay_s")
    assert duration_s(api["stop_grace_period"]) > service_s, (
        f"stop_grace_period {api['stop_grace_period']} must exceed RDAD_GRACE_PERIOD_S + "
        f"RDAD_DRAIN_DELAY_S = {service_s:g} s, or Docker SIGKILLs a draining service"
    )


def test_compose_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    train = services["train"]
    assert train["profiles"] == ["train"]
    assert train["build"]["dockerfile"] == "docker/Dockerfile.train"
    assert train["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    targets = {str(v).split(":")[1] for v in train["volumes"]}
    assert {"/data", "/runs", "/models"} <= targets
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./docker/"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_the_api_service(compose: dict[str, Any], api: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_FILE)
    (job,) = config["scrape_configs"]
    assert job["job_name"] in TARGET_LABELS | {"rdad"}
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = [t for static in job["static_configs"] for t in static["targets"]]
    host, _, port = target.partition(":")
    assert host == "api" and host in compose["services"]
    assert int(port) == container_port(api)
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./docker/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in grafana["volumes"]}
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"

    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    url = httpx.URL(source["url"])
    assert url.host == "prometheus" and "prometheus" in compose["services"]
    assert container_port(compose["services"]["prometheus"]) == url.port

    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "rdad.yml")["providers"]
    assert mounts["./docker/grafana/dashboards"] == provider["options"]["path"]

    dashboard = json.loads(DASHBOARD_FILE.read_text())
    uids = {
        ref["uid"]
        for ref in iter_dicts(dashboard)
        if isinstance(ref, dict) and ref.get("type") == "prometheus" and "uid" in ref
    }
    assert uids == {source["uid"]}, "every panel must use the provisioned datasource"


# --- dashboard vs. service/metrics.py -----------------------------------------------------------


def iter_dicts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from iter_dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from iter_dicts(value)


def metric_catalog() -> dict[str, set[str]]:
    """Every series name ``/metrics`` can show, with its label names, from the real registry."""
    from prometheus_client.metrics import MetricWrapperBase

    from rdad.service.metrics import Metrics

    metrics = Metrics(max_batch_size=16)
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    catalog: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            labels = set(value._labelnames)
            for suffix in suffixes[value._type]:
                catalog[value._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    for family in metrics.registry.collect():  # process_*, python_* (unlabelled, so sampled)
        for sample in family.samples:
            catalog.setdefault(sample.name, set()).update(sample.labels)
    return catalog


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    queries = [d["expr"] for d in iter_dicts(dashboard.get("panels", [])) if "expr" in d]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else str(query))
    return queries


def test_dashboard_uses_only_metrics_the_service_exports() -> None:
    catalog = metric_catalog()
    assert {"rdad_requests_total", "rdad_request_duration_seconds_bucket"} <= set(catalog)
    queries = dashboard_queries()
    assert len(queries) >= 8
    used: set[str] = set()
    for query in queries:
        names = set(re.findall(r"\b((?:rdad|process|python)_[A-Za-z0-9_]+)\b", query))
        assert names, f"query names no service metric: {query}"
        unknown = names - set(catalog)
        assert not unknown, f"{sorted(unknown)} not exported by service/metrics.py: {query}"
        used |= names
        labels_here = set().union(*(catalog[n] for n in names)) | TARGET_LABELS
        for name, selector in re.findall(r"\b([a-z_][a-z0-9_]*)\s*\{([^}]*)\}", query):
            if name in catalog:
                for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector):
                    assert label in catalog[name] | TARGET_LABELS, f"{name} has no {label}: {query}"
        for group in re.findall(r"\bby\s*\(([^)]*)\)", query):
            for label in filter(None, (g.strip() for g in group.split(","))):
                assert label in labels_here, f"no label {label!r} to group by: {query}"
        for argument in re.findall(r"histogram_quantile\([^,]+,(.*)", query):
            assert "_bucket" in argument, f"histogram_quantile needs _bucket series: {query}"
    # The panels the dashboard exists for.
    assert {
        "rdad_requests_total",
        "rdad_request_duration_seconds_bucket",
        "rdad_batch_size_bucket",
        "rdad_queue_depth",
        "rdad_normalized_score_bucket",
    } <= used
    assert any(
        "histogram_quantile(0.95" in q and "rdad_request_duration_seconds_bucket" in q
        for q in queries
    )
    assert any("by (status)" in q and "rdad_requests_total" in q for q in queries)


# --- Kubernetes ---------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest(k8s: dict[str, dict[str, Any]]) -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert set(k8s) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert k8s["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert k8s["PodDisruptionBudget"]["apiVersion"] == "policy/v1"
    image_names = {i["name"] for i in load_yaml(K8S / "kustomization.yaml").get("images", [])}
    assert container(k8s["Deployment"])["image"].split(":")[0] in image_names


def test_k8s_pod_gets_one_gpu_and_the_service_port(
    k8s: dict[str, dict[str, Any]], serve_df: Dockerfile
) -> None:
    pod = container(k8s["Deployment"])
    assert pod["resources"]["limits"]["nvidia.com/gpu"] == 1
    (port,) = pod["ports"]
    assert [str(port["containerPort"])] == serve_df.get("EXPOSE", serve_df.final_stage)
    assert k8s_env(k8s["Deployment"])["RDAD_PORT"] == str(port["containerPort"])
    assert k8s_env(k8s["Deployment"])["RDAD_HOST"] == "0.0.0.0"
    annotations = k8s["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_k8s_probes(k8s: dict[str, dict[str, Any]]) -> None:
    pod = container(k8s["Deployment"])
    port_names = {p["name"] for p in pod["ports"]} | {p["containerPort"] for p in pod["ports"]}
    assert pod["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = pod["startupProbe"]
    # Not /readyz: a pod whose model volume is still empty would never start, and be killed.
    assert startup["httpGet"]["path"] == "/healthz"
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 300, f"startupProbe allows only {budget} s for model loading"
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert pod[kind]["httpGet"]["port"] in port_names, kind


def test_k8s_termination_grace_outlasts_prestop_and_drain(k8s: dict[str, dict[str, Any]]) -> None:
    spec = k8s["Deployment"]["spec"]["template"]["spec"]
    pod = container(k8s["Deployment"])
    pre_stop = pod["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep_s = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] in ("sleep", "/bin/sleep"), command
        sleep_s = float(command[1])
    assert sleep_s >= 1, "preStop must give endpoints time to drop the pod"
    env = k8s_env(k8s["Deployment"])
    needed = (
        sleep_s + effective_value(env, "grace_period_s") + effective_value(env, "drain_delay_s")
    )
    assert spec["terminationGracePeriodSeconds"] > needed, (
        f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} must exceed "
        f"preStop + RDAD_GRACE_PERIOD_S + RDAD_DRAIN_DELAY_S = {needed:g} s"
    )


def test_k8s_security_context(k8s: dict[str, dict[str, Any]], serve_df: Dockerfile) -> None:
    spec = k8s["Deployment"]["spec"]["template"]["spec"]
    pod = container(k8s["Deployment"])
    assert spec["securityContext"]["runAsNonRoot"] is True
    image_user = serve_df.get("USER", serve_df.final_stage)[-1].split(":")[0]
    assert str(spec["securityContext"]["runAsUser"]) == image_user
    assert pod["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "/tmp must be writable"
    trt_cache = k8s_env(k8s["Deployment"]).get("RDAD_TRT_CACHE_DIR", "")
    assert any(
        trt_cache.startswith(path) and "emptyDir" in volumes[m["name"]]
        for path, m in mounts.items()
    ), "the TensorRT cache must be on a writable volume"


def test_k8s_models_come_read_only_from_a_pvc(k8s: dict[str, dict[str, Any]]) -> None:
    spec = k8s["Deployment"]["spec"]["template"]["spec"]
    pod = container(k8s["Deployment"])
    model_dir = k8s_env(k8s["Deployment"])["RDAD_MODEL_DIR"]
    (mount,) = [m for m in pod["volumeMounts"] if m["mountPath"] == model_dir]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["readOnly"] is True


def test_k8s_service_hpa_and_pdb_fit_the_deployment(k8s: dict[str, dict[str, Any]]) -> None:
    deployment = k8s["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    pod = container(deployment)

    service = k8s["Service"]["spec"]
    assert service["selector"].items() <= pod_labels.items()
    (port,) = service["ports"]
    assert port["targetPort"] in {p["name"] for p in pod["ports"]} | {
        p["containerPort"] for p in pod["ports"]
    }

    hpa = k8s["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    for metric in hpa["metrics"]:
        if metric["type"] == "Resource":
            resource = metric["resource"]["name"]
            assert resource in pod["resources"]["requests"], (
                f"utilisation needs a {resource} request"
            )
        elif metric["type"] == "Pods":
            assert metric["pods"]["metric"]["name"] in metric_catalog()

    pdb = k8s["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["minAvailable"] < hpa["minReplicas"], "a PDB at minReplicas blocks every drain"


# --- Kubernetes: scaling on the queue wait (opt-in) --------------------------------------------

QUEUE_WAIT = K8S / "queue-wait"


def json_patch(document: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 ``add`` / ``replace`` on object members: what the component's patch uses."""
    out = json.loads(json.dumps(document))
    for op in operations:
        assert op["op"] in ("add", "replace"), op
        *parents, last = op["path"].lstrip("/").split("/")
        node = out
        for key in parents:
            node = node[key]
        assert op["op"] == "add" or last in node, f"nothing to replace at {op['path']}"
        node[last] = op["value"]
    return out


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number: ``100m`` = 0.1."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_cpu_scaling_stays_the_default(k8s: dict[str, dict[str, Any]]) -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert "components" not in kustomization, "scaling on the queue wait needs an adapter: opt-in"
    assert "#   - queue-wait" in (K8S / "kustomization.yaml").read_text(), "the opt-in is shown"
    (metric,) = k8s["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"


def test_queue_wait_component_swaps_the_hpa_metric(k8s: dict[str, dict[str, Any]]) -> None:
    component = load_yaml(QUEUE_WAIT / "kustomization.yaml")
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert component["kind"] == "Component"
    hpa = k8s["HorizontalPodAutoscaler"]
    (patch,) = component["patches"]
    assert patch["target"] == {
        "group": "autoscaling",
        "version": "v2",
        "kind": "HorizontalPodAutoscaler",
        "name": hpa["metadata"]["name"],
    }
    patched = json_patch(hpa, load_yaml(QUEUE_WAIT / patch["path"]))
    (metric,) = patched["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    target_s = quantity(metric["pods"]["target"]["averageValue"])
    request_timeout_s = Settings.model_fields["request_timeout_s"].default
    assert 0 < target_s < request_timeout_s, "a queue wait the service can reach without 504s"
    assert patched["spec"]["behavior"] == hpa["spec"]["behavior"], "only the metric changes"
    rules = load_yaml(QUEUE_WAIT / "prometheus-adapter-rules.yaml")["rules"]["custom"]
    assert metric["pods"]["metric"]["name"] in {rule["name"]["as"] for rule in rules}


def test_prometheus_adapter_rule_reads_series_the_service_exports() -> None:
    values = load_yaml(QUEUE_WAIT / "prometheus-adapter-rules.yaml")
    assert values["rules"]["default"] is False, "only rdad's rule, not every series as a metric"
    (rule,) = values["rules"]["custom"]
    catalog = metric_catalog()
    series = re.findall(r"\b(rdad_[a-z0-9_]+)\b", rule["seriesQuery"])
    assert series and all(name in catalog for name in series), rule["seriesQuery"]
    assert any(re.fullmatch(rule["name"]["matches"], name) for name in series)
    overrides = rule["resources"]["overrides"]
    assert {v["resource"] for v in overrides.values()} == {"namespace", "pod"}
    query = rule["metricsQuery"]
    used = re.findall(r"\b(rdad_[a-z0-9_]+)\{([^}]*)\}", query)
    wanted = {"rdad_queue_wait_seconds_sum", "rdad_queue_wait_seconds_count"}
    assert {name for name, _ in used} == wanted, "the mean wait: sum over count"
    assert all(name in catalog and selector == "<<.LabelMatchers>>" for name, selector in used)
    assert query.count("by (<<.GroupBy>>)") == len(used), "one value per pod"
    assert "clamp_min(" in query, "no traffic must read 0, not a division by zero"


# --- the serving image's command line, on the host ----------------------------------------------


def image_command(df: Dockerfile) -> list[str]:
    """ENTRYPOINT + CMD, with the console script resolved to this environment's."""
    command = df.exec_form("ENTRYPOINT") + df.exec_form("CMD")
    script = Path(sys.executable).with_name(command[0])
    assert script.exists(), f"{command[0]} is not installed next to {sys.executable}"
    return [str(script), *command[1:]]


def host_env(df: Dockerfile, api: dict[str, Any], no_torch: Path, **rdad: str) -> dict[str, str]:
    """The host environment without RDAD_*, plus the image's and compose's RDAD_* variables,
    plus overrides; torch unimportable; the venv first on PATH (the image's /opt/venv/bin)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RDAD_")}
    env.update({k: v for k, v in df.env().items() if k.startswith("RDAD_")})
    env.update(compose_env(api))
    # Compose says RDAD_DEVICE=cuda; these host runs have no GPU (the refusal has its own test).
    env["RDAD_DEVICE"] = "auto"
    env.update(rdad)
    env["PYTHONPATH"] = str(no_torch)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def png(size: int = 80) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 130, 140)).save(buf, "PNG")
    return buf.getvalue()


def test_serving_entrypoint_with_polling_off_refuses_a_missing_model(
    serve_df: Dockerfile, api: dict[str, Any], no_torch: Path, tmp_path: Path
) -> None:
    """RDAD_MODEL_POLL_S=0 (not the shipped setting) without a model: exit once, non-zero, saying
    why (the image cannot build the demo model: no torch)."""
    empty = tmp_path / "models"
    empty.mkdir()
    env = host_env(
        serve_df,
        api,
        no_torch,
        RDAD_HOST="127.0.0.1",
        RDAD_PORT=str(free_port()),
        RDAD_MODEL_DIR=str(empty),
        RDAD_MODEL_POLL_S="0",
        RDAD_TRT_CACHE_DIR=str(tmp_path / "trt"),
    )
    done = subprocess.run(
        image_command(serve_df), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{empty}: no models in the model folder" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(300, func_only=True)  # a process start, a model load and a drain
def test_serving_entrypoint_waits_for_models_in_an_empty_folder(
    serve_df: Dockerfile, api: dict[str, Any], no_torch: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    """The image with compose's settings and an empty model folder: up, healthy (so no restart),
    not ready with the folder named; a model copied in is served without a restart."""
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    port = free_port()
    env = host_env(
        serve_df,
        api,
        no_torch,
        RDAD_HOST="127.0.0.1",
        RDAD_PORT=str(port),
        RDAD_MODEL_DIR=str(model_dir),
        RDAD_MODEL_POLL_S="0.2",  # compose's 5 s, shortened for the test
        RDAD_TRT_CACHE_DIR=str(tmp_path / "trt"),
    )
    log_path = tmp_path / "serve.log"
    _, healthcheck = serve_df.healthcheck()

    def log() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    with log_path.open("wb") as out:
        proc = subprocess.Popen(image_command(serve_df), env=env, stdout=out, stderr=out)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"rdad serve exited {proc.returncode}:\n{log()}"
                assert time.monotonic() < deadline, f"never answered:\n{log()}"
                try:
                    health = client.get("/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert health.status_code == 200
            assert subprocess.run(healthcheck, env=env, timeout=30, check=False).returncode == 0
            waiting = client.get("/readyz")
            assert waiting.status_code == 503, waiting.text
            assert "no models in the model folder" in waiting.json()["detail"]
            assert str(model_dir) not in waiting.text  # the open /readyz shows no host paths
            staged = tmp_path / "tiny.onnx"
            shutil.copy(tiny_onnx, staged)
            os.replace(staged, model_dir / "tiny.onnx")  # atomic, as a deploy tool would
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 200:
                assert proc.poll() is None, f"rdad serve exited {proc.returncode}:\n{log()}"
                assert time.monotonic() < deadline, f"model never picked up:\n{log()}"
                time.sleep(0.1)
            answer = client.post("/predict", files={"file": ("part.png", png(), "image/png")})
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"]["name"] == "tiny"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log()
        assert "Traceback" not in log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.timeout(120, func_only=True)  # the tiny model fixture may be trained first
def test_serving_entrypoint_runs_on_the_host_and_stops_on_sigterm(
    serve_df: Dockerfile,
    api: dict[str, Any],
    no_torch: Path,
    tiny_onnx: Path,
    tmp_path: Path,
) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    shutil.copy(tiny_onnx, model_dir / "tiny.onnx")
    port = free_port()
    env = host_env(
        serve_df,
        api,
        no_torch,
        RDAD_HOST="127.0.0.1",
        RDAD_PORT=str(port),
        RDAD_MODEL_DIR=str(model_dir),
        RDAD_TRT_CACHE_DIR=str(tmp_path / "trt"),
    )
    drain_s = effective_value(env, "drain_delay_s")
    grace_s = effective_value(env, "grace_period_s")
    assert drain_s >= 1, "keep a drain delay: /readyz must say 503 before the port closes"
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    _, healthcheck = serve_df.healthcheck()
    compose_check = api["healthcheck"]["test"][1:]

    def log() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    def probe(argv: list[str]) -> int:
        return subprocess.run(
            argv, env=env, capture_output=True, timeout=30, check=False
        ).returncode

    with log_path.open("wb") as out:
        proc = subprocess.Popen(image_command(serve_df), env=env, stdout=out, stderr=out)
    try:
        with httpx.Client(base_url=base, timeout=5.0) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"rdad serve exited {proc.returncode}:\n{log()}"
                assert time.monotonic() < deadline, f"never ready:\n{log()}"
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)

            health = client.get("/healthz")
            assert health.status_code == 200 and health.json()["status"] == "alive"
            assert probe(healthcheck) == 0, "Dockerfile HEALTHCHECK failed"
            assert probe(compose_check) == 0, "compose healthcheck failed"
            answer = client.post("/predict", files={"file": ("part.png", png(), "image/png")})
            assert answer.status_code == 200, answer.text
            assert 0.0 <= answer.json()["normalized_score"] <= 1.0
            assert "rdad_requests_total" in client.get("/metrics").text

            proc.send_signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            # During the drain delay the port stays open and /readyz says 503 (load balancers).
            statuses = set()
            while time.monotonic() < stopped_at + drain_s * 0.75:
                try:
                    statuses.add(client.get("/readyz").status_code)
                except httpx.TransportError:
                    break
                if 503 in statuses:
                    break
                time.sleep(0.05)
            assert 503 in statuses, f"/readyz after SIGTERM: {statuses}\n{log()}"

        code = proc.wait(timeout=grace_s + drain_s + 10)
        elapsed = time.monotonic() - stopped_at
        assert code == 0, f"exit code {code} after SIGTERM:\n{log()}"
        assert drain_s * 0.75 <= elapsed < grace_s, f"stopped after {elapsed:.1f} s"
        assert probe(healthcheck) != 0, "HEALTHCHECK passes with no server"
        assert "loading tiny from" in log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_deployments_require_the_gpu(api: dict[str, Any], k8s: dict[str, dict[str, Any]]) -> None:
    assert compose_env(api)["RDAD_DEVICE"] == "cuda"
    assert k8s_env(k8s["Deployment"])["RDAD_DEVICE"] == "cuda"
    # The TensorRT cache lives on a writable volume, not in the read-only model folder.
    trt = compose_env(api)["RDAD_TRT_CACHE_DIR"]
    assert any(trt.startswith(v.split(":")[1]) for v in api["volumes"] if not v.endswith(":ro"))
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    trt_k8s = k8s_env(k8s["Deployment"])["RDAD_TRT_CACHE_DIR"]
    assert any(trt_k8s.startswith(p) and not m.get("readOnly") for p, m in mounts.items())


def test_serving_entrypoint_refuses_cuda_without_a_gpu(
    serve_df: Dockerfile, api: dict[str, Any], no_torch: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    """The deployed policy (RDAD_DEVICE=cuda) on a host without a usable GPU: exit non-zero at
    once, naming the reason, instead of serving at CPU speed behind a green health check."""
    from rdad.service.device import gpu_problem

    problem = gpu_problem(Settings(device="cuda"))
    if problem is None:
        pytest.skip("this host has a usable GPU")
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    shutil.copy(tiny_onnx, model_dir / "tiny.onnx")
    env = host_env(
        serve_df,
        api,
        no_torch,
        RDAD_HOST="127.0.0.1",
        RDAD_PORT=str(free_port()),
        RDAD_MODEL_DIR=str(model_dir),
        RDAD_TRT_CACHE_DIR=str(tmp_path / "trt"),
        RDAD_DEVICE=compose_env(api)["RDAD_DEVICE"],
    )
    assert env["RDAD_DEVICE"] == "cuda"
    done = subprocess.run(
        image_command(serve_df), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "RDAD_DEVICE=cuda" in done.stderr and problem in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
