"""The manifests under ``deploy/``, read for the deploy tests: documents, their pod templates and containers,
label selectors, and the few rules of the Kubernetes "restricted" Pod Security Standard that a pod must meet."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from fleetscore.cli.main import app

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kuberay"
#: Container lists of a pod spec; the standard's container rules apply to each of them.
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
#: Volume types the restricted standard allows (anything else, hostPath first, is refused).
RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                                "projected", "secret"})
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})


def documents() -> list[dict[str, Any]]:
    """Every Kubernetes resource of the manifests in ``deploy/kuberay`` (not ``kustomization.yaml``: kustomize's own)."""
    paths = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    """The one document of ``kind`` named (or generate-named) ``name``."""
    [doc] = [d for d in of_kind(kind) if name in (d["metadata"].get("name"), d["metadata"].get("generateName"))]
    return doc


def pod_templates(doc: Any) -> Iterator[dict[str, Any]]:
    """Every pod template (``{metadata, spec}`` whose spec has containers) anywhere in a manifest: those of
    Deployments and Jobs, a RayCluster's head and worker groups, a RayJob's submitter."""
    if isinstance(doc, dict):
        if isinstance(doc.get("spec"), dict) and "containers" in doc["spec"]:
            yield doc
        for value in doc.values():
            yield from pod_templates(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from pod_templates(item)


def containers(doc: Any) -> Iterator[dict[str, Any]]:
    """Every container, init containers included, of every pod template in a manifest."""
    for template in pod_templates(doc):
        for key in CONTAINER_LISTS:
            yield from template["spec"].get(key, [])


def only_container(doc: dict[str, Any]) -> dict[str, Any]:
    [container] = [c for t in pod_templates(doc) for c in t["spec"]["containers"]]
    return container


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) matches ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def restricted_violations(spec: dict[str, Any], extra: tuple[dict[str, Any], ...] = ()) -> list[str]:
    """Where a pod spec breaks the "restricted" Pod Security Standard (empty: it meets it).

    Checked: no host namespaces, ports or paths, only the allowed volume types; per container (and the
    ``extra`` containers an operator adds to the pod) not privileged, no privilege escalation, all
    capabilities dropped (NET_BIND_SERVICE the one allowed back), non-root, and a RuntimeDefault or
    Localhost seccomp profile, each set on the container or inherited from the pod.
    """
    problems = [f"{key} is on" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key) is True]
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds - RESTRICTED_VOLUMES)} not allowed")
    pod = spec.get("securityContext", {})
    every = [c for key in CONTAINER_LISTS for c in spec.get(key, [])] + list(extra)
    for c in every:
        sc, name = c.get("securityContext", {}), c["name"]
        caps = sc.get("capabilities", {})
        if sc.get("privileged") is True:
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if 0 in (sc.get("runAsUser"), pod.get("runAsUser")):
            problems.append(f"{name}: runs as user 0")
        seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in SECCOMP_TYPES:
            problems.append(f"{name}: seccomp profile {seccomp!r}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def help_options(command: list[str]) -> set[str]:
    """The ``--flags`` that ``fleetscore COMMAND --help`` lists."""
    text = CliRunner().invoke(app, [*command, "--help"], terminal_width=200).stdout
    return set(re.findall(r"--[a-z][a-z-]*", text))


def assert_cli_accepts(command: list[str], args: list[str]) -> None:
    """Every ``--flag`` the manifest passes is an option of ``fleetscore COMMAND``."""
    flags = {a for a in args if a.startswith("--")}
    assert flags and flags <= help_options(command), (command, flags - help_options(command))
