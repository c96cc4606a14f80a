"""What can be checked of the deployment files without a container runtime or a cluster."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.34.0"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuations joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_conventional_non_root_and_without_secrets() -> None:
    steps = instructions(DEPLOY / "docker" / "Dockerfile")
    known = {
        "FROM",
        "ENV",
        "WORKDIR",
        "COPY",
        "RUN",
        "VOLUME",
        "USER",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
        "HEALTHCHECK",
    }
    assert {word for word, _ in steps} <= known
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [w for w, _ in steps].index("USER") > max(i for i, (w, _) in enumerate(steps) if w == "RUN")
    assert ("VOLUME", '["/var/lib/slice-agent"]') in steps
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert not re.search(r"(?i)(password|secret|token|api[_-]?key)\s*=", text)
    assert "ADD " not in text


def manifests() -> list[dict[str, object]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "agent.yaml").read_text()) if doc]


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: str(d["kind"]))
def test_kubernetes_manifests_validate(doc: dict[str, object]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_deployment_runs_non_root_on_a_read_only_root() -> None:
    [deployment] = [d for d in manifests() if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]  # type: ignore[index]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/var/lib/slice-agent" in {m["mountPath"] for m in container["volumeMounts"]}


# ----------------------------------------------------------------------------- compose

#: The Compose Specification's JSON schema, as shipped in docker-compose 1.29.2
#: (compose/config/compose_spec.json, Apache-2.0): the newest copy that can be had offline here.
COMPOSE_SCHEMA = Path(__file__).resolve().parents[1] / "data" / "compose_spec.json"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    assert [e.message for e in validator.iter_errors(compose())] == []
    # The schema is strict: a misspelt key is an error, not ignored.
    broken = compose()
    broken["services"]["agent"]["readonly"] = True
    assert list(validator.iter_errors(broken))


def test_compose_stack_has_every_part_and_publishes_on_loopback_only() -> None:
    services = compose()["services"]
    assert set(services) == {
        "kafka",
        "postgres",
        "orthanc",
        "agent",
        "mllp",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    assert services["kafka"]["image"].startswith("apache/kafka:")
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    for name in ("agent", "mllp"):
        assert services[name]["read_only"] is True
        assert services[name]["user"].split(":")[0] not in ("0", "root")
    assert services["orthanc"]["environment"]["DICOM_WEB_PLUGIN_ENABLED"] == "true"


def test_compose_mounts_files_that_exist_and_keeps_secrets_out_of_the_repository() -> None:
    doc = compose()
    sources = [
        volume.split(":")[0]
        for service in doc["services"].values()
        for volume in service.get("volumes", [])
        if volume.startswith(".")
    ]
    sources += [config["file"] for config in doc["configs"].values()]
    assert sources
    for source in sources:
        assert (DEPLOY / source).exists(), source
    for secret in doc["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    ignored = (DEPLOY.parent / ".gitignore").read_text().splitlines()
    assert "/deploy/secrets/" in ignored


def test_compose_grafana_data_source_is_the_provisioned_one_on_the_compose_network() -> None:
    provisioned = yaml.safe_load(
        (DEPLOY.parent / "grafana/provisioning/datasources/slice-agent.yaml").read_text()
    )
    composed = yaml.safe_load((DEPLOY / "compose" / "grafana-datasource.yaml").read_text())
    [a], [b] = provisioned["datasources"], composed["datasources"]
    assert {**a, "url": None} == {**b, "url": None}
    assert b["url"] == "http://prometheus:9090"


def test_compose_prometheus_config_passes_promtool_with_the_same_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    proc = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "compose.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plain = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    composed = yaml.safe_load((DEPLOY / "prometheus" / "compose.yml").read_text())
    assert composed["rule_files"] == plain["rule_files"]
