"""What can be checked of the deployment files without a container runtime or a cluster."""

from __future__ import annotations

import re
from pathlib import Path

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
