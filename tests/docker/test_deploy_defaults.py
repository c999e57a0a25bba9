"""Safe deploy defaults, judged on the files as Compose would read them (variables interpolated by
a small evaluator of Compose's `${VAR}` / `${VAR:-default}` / `$$` rules): ports published on
127.0.0.1 unless BIND_ADDRESS says otherwise, no default Grafana password, anonymous viewing off,
one image tag everywhere, and git ignoring everything the README flow writes."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from .test_docker_files import COMPOSE_FILE, K8S, REPO, k8s_docs, load_yaml

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


class MissingVariable(ValueError):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        current = env.get(name)
        unset_or_empty = current is None or (current == "" and op is not None and ":" in op)
        if op in ("-", ":-") and unset_or_empty:
            return arg
        if op in ("?", ":?") and unset_or_empty:
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return VARIABLE.sub(one, value)


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(item, env) for key, item in node.items()}
    return node


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return resolve(load_yaml(COMPOSE_FILE), env or {})


def published(services: dict[str, Any]) -> dict[str, list[str]]:
    """Host address of every published port, per service (HOST_IP:HOST_PORT:CONTAINER_PORT)."""
    out: dict[str, list[str]] = {}
    for name, service in services.items():
        for mapping in service.get("ports", []):
            parts = str(mapping).split(":")
            assert len(parts) == 3, f"{name} publishes {mapping} on every interface"
            out.setdefault(name, []).append(parts[0])
    return out


def test_evaluator_follows_compose_rules() -> None:
    assert interpolate("${A:-x}/${B-y}/$$C/$D", {"A": "", "B": "", "D": "d"}) == "x//$C/d"
    with pytest.raises(MissingVariable):
        interpolate("${A:?need A}", {"A": ""})


def test_compose_file_needs_no_variable_to_load() -> None:
    """Compose interpolates every service before it applies profiles: a required variable in any
    service (`${VAR:?}`) would break a plain `docker compose up`."""
    compose({})


def test_ports_are_published_on_loopback_by_default() -> None:
    ports = published(compose({})["services"])
    assert {"api", "prometheus", "grafana"} <= set(ports)
    assert {ip for ips in ports.values() for ip in ips} == {"127.0.0.1"}


def test_bind_address_opts_into_every_interface() -> None:
    ports = published(compose({"BIND_ADDRESS": "0.0.0.0"})["services"])
    assert {ip for ips in ports.values() for ip in ips} == {"0.0.0.0"}


def test_grafana_has_no_default_password_and_no_anonymous_viewing() -> None:
    grafana = compose({})["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == ""
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    opted = compose({"GRAFANA_ADMIN_PASSWORD": "s3cret", "GRAFANA_ANONYMOUS": "true"})
    assert opted["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    assert opted["services"]["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"


@pytest.mark.parametrize("password", ["", "s3cret"])
def test_grafana_entrypoint_refuses_to_start_without_a_password(
    password: str, tmp_path: Path
) -> None:
    """Run the compose entrypoint with /bin/sh, Grafana's /run.sh replaced by a stub."""
    entrypoint = compose({"GRAFANA_ADMIN_PASSWORD": password})["services"]["grafana"]["entrypoint"]
    stub = tmp_path / "run.sh"
    stub.write_text('#!/bin/sh\necho "grafana started $*"\n')
    stub.chmod(0o755)
    argv = [part.replace("/run.sh", str(stub)) for part in entrypoint]
    env = {"PATH": os.environ["PATH"], "GF_SECURITY_ADMIN_PASSWORD": password}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    if password:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "grafana started"
    else:
        assert done.returncode == 1
        assert "GRAFANA_ADMIN_PASSWORD" in done.stderr and "grafana started" not in done.stdout


def test_image_tags_are_the_project_version() -> None:
    services = compose({})["services"]
    assert services["api"]["image"] == f"rdad-serve:{VERSION}"
    assert services["train"]["image"] == f"rdad-train:{VERSION}"
    kustomization = load_yaml(K8S / "kustomization.yaml")
    (image,) = kustomization["images"]
    assert image["name"] == "rdad-serve" and str(image["newTag"]) == VERSION
    deployment = k8s_docs()["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "rdad-serve", "the tag is set in kustomization.yaml only"


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("datasets/bottle/train/good/000.png", True),
        ("runs/bottle/checkpoint.pt", True),
        ("runs/bottle/train.log", True),
        ("models/bottle/model.onnx", True),
        ("models/README.txt", True),
        ("reports/bottle.json", True),
        ("reports/bottle.md", True),
        ("results/results.csv", True),  # rdad predict --out results/ (the README's example)
        ("results/photos/000.heatmap.png", True),
        (".env", True),
        ("model/network.py", False),
        ("service/routes/models.py", False),
        ("requirements/dev.lock", False),
        ("docker/k8s/deployment.yaml", False),
    ],
)
def test_git_ignores_what_the_readme_flow_writes(path: str, ignored: bool) -> None:
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, check=False, timeout=30
    )
    assert done.returncode in (0, 1), f"git check-ignore failed for {path}"
    assert (done.returncode == 0) is ignored, f"{path} ignored={done.returncode == 0}"
