"""What can be checked of the deployment files without a container runtime or a cluster."""

from __future__ import annotations

import importlib.util
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


def manifests() -> list[dict[str, Any]]:
    """The Kubernetes manifests of the core API (agent.yaml, sidecar.yaml); not the operator's CRDs."""
    return [
        doc
        for name in ("agent.yaml", "sidecar.yaml")
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text())
        if doc
    ]


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_kubernetes_manifests_validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_deployments_run_the_agent_non_root_on_a_read_only_root() -> None:
    deployments = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "Deployment"}
    assert set(deployments) == {"slice-agent", "inference-service"}
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        [agent] = [c for c in pod["containers"] if c["name"] == "slice-agent"]
        assert agent["securityContext"]["readOnlyRootFilesystem"] is True
        assert "/var/lib/slice-agent" in {m["mountPath"] for m in agent["volumeMounts"]}
    # The sidecar keeps its SQLite store on a claim; its pod is never run twice at once.
    sidecar = deployments["inference-service"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in sidecar["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["slice-agent-state"] and sidecar["strategy"]["type"] == "Recreate"
    assert any(
        d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "slice-agent-state"
        for d in manifests()
    )


def _monitoring() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((DEPLOY / "k8s" / "monitoring.yaml").read_text())
    return {d["kind"]: d for d in docs if d}


def test_monitoring_manifests_are_generated_from_the_rules_file() -> None:
    spec = importlib.util.spec_from_file_location("k8s_build", DEPLOY / "k8s" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.render() == (DEPLOY / "k8s" / "monitoring.yaml").read_text(), (
        "deploy/k8s/monitoring.yaml is out of date: run python deploy/k8s/build.py"
    )


def test_prometheus_rule_carries_exactly_the_rules_promtool_tests(tmp_path: Path) -> None:
    rule = _monitoring()["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules_file = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "slice-agent.rules.yml").read_text())
    assert rule["spec"]["groups"] == rules_file["groups"]
    # The promtool unit tests pass on the rules as the PrometheusRule carries them.
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / "slice-agent.rules.yml").write_text(
        yaml.safe_dump({"groups": rule["spec"]["groups"]})
    )
    tests = DEPLOY / "prometheus" / "tests" / "slice-agent.test.yml"
    assert yaml.safe_load(tests.read_text())["rule_files"] == ["../rules/slice-agent.rules.yml"]
    shutil.copy(tests, tmp_path / "tests" / tests.name)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    proc = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests" / tests.name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_service_monitor_scrapes_the_agent_services_as_job_slice_agent() -> None:
    monitor = _monitoring()["ServiceMonitor"]["spec"]
    services = [d for d in manifests() if d["kind"] == "Service"]
    selected = [
        s for s in services if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert {s["metadata"]["name"] for s in selected} == {"slice-agent", "inference-service-slice-agent"}
    [endpoint] = monitor["endpoints"]
    for service in selected:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert service["metadata"]["labels"][monitor["jobLabel"]] == "slice-agent"


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


# ----------------------------------------------------------------------------- systemd

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_units_verify_without_a_warning(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd"
    # ExecStart must name an executable that exists: a stand-in for the installed slice-agent.
    binary = tmp_path / "slice-agent"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/slice-agent/bin/slice-agent", str(binary)))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=120
    )
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if str(copy) in line]
    assert proc.returncode == 0 and complaints == [], proc.stdout + proc.stderr
    # A misspelt key is reported: the check can fail.
    copy.write_text(copy.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=120
    )
    assert "Unknown key" in proc.stdout + proc.stderr


def test_systemd_units_run_unprivileged_on_a_read_only_system() -> None:
    assert {u.name for u in UNITS} == {"slice-agent.service", "slice-agent-mllp.service"}
    for unit in UNITS:
        keys = dict(
            line.split("=", 1)
            for line in unit.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
        assert keys["User"] == "slice-agent" and keys["NoNewPrivileges"] == "yes"
        assert keys["ProtectSystem"] == "strict" and keys["CapabilityBoundingSet"] == ""
    agent = UNITS[[u.name for u in UNITS].index("slice-agent.service")].read_text()
    assert "StateDirectory=slice-agent" in agent and "StateDirectoryMode=0700" in agent
