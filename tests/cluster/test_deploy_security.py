"""Pod security and network reach of the manifests under ``deploy/``: every pod template (Deployments, Jobs,
the RayCluster's head and worker groups, the RayJob's submitter) meets the "restricted" Pod Security Standard,
and a NetworkPolicy keeps the Ray head's ports (and the drivers' Ray nodes) inside the namespace."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from deploy_manifests import documents, named, of_kind, pod_templates, restricted_violations, selects

#: Pods that run Ray processes (head, workers, and the drivers' own nodes): only the namespace may reach them.
RAY_COMPONENTS = {"ray-head", "ray-worker", "scheduler", "train"}
#: The one port the KubeRay operator, from its own namespace, needs on the head: the dashboard (Jobs API).
OPERATOR_PORTS = [8265]


def pod_extras(doc: dict[str, Any], template: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """Containers an operator adds to a pod: KubeRay's autoscaler sidecar in the head pod."""
    if doc["kind"] == "RayCluster" and template is doc["spec"]["headGroupSpec"]["template"]:
        return ({"name": "autoscaler", "securityContext": doc["spec"]["autoscalerOptions"]["securityContext"]},)
    return ()


def all_templates() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(doc, t) for doc in documents() for t in pod_templates(doc)]


def test_every_pod_meets_the_restricted_standard() -> None:
    templates = all_templates()
    components = {t["metadata"]["labels"]["app.kubernetes.io/component"] for _, t in templates}
    assert {"ray-head", "ray-worker", "scheduler", "train", "ingest-http", "ingest-kafka", "backfill-submitter"} <= components
    for doc, template in templates:
        assert restricted_violations(template["spec"], pod_extras(doc, template)) == [], template["metadata"]["labels"]


def _good_pod() -> dict[str, Any]:
    return copy.deepcopy(named("Deployment", "fleetscore-scheduler")["spec"]["template"]["spec"])


@pytest.mark.parametrize(("change", "reason"), [
    (lambda p: p.update(hostNetwork=True), "hostNetwork"),
    (lambda p: p.update(volumes=[{"name": "h", "hostPath": {"path": "/"}}]), "hostPath"),
    (lambda p: p["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
    (lambda p: p["securityContext"].update(runAsUser=0), "user 0"),
    (lambda p: p["securityContext"].pop("seccompProfile"), "seccomp"),
    (lambda p: p["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccomp"),
    (lambda p: p["initContainers"][0]["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "privileged"),
    (lambda p: p["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}), "drop ALL"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "adds"),
    (lambda p: p["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]), "hostPort"),
])
def test_the_check_catches_each_rule_broken(change: Any, reason: str) -> None:
    pod = _good_pod()
    assert restricted_violations(pod) == []
    change(pod)
    assert any(reason in problem for problem in restricted_violations(pod)), restricted_violations(pod)


def test_network_policy_keeps_ray_ports_inside_the_namespace() -> None:
    [policy] = of_kind("NetworkPolicy")
    spec = policy["spec"]
    assert "metadata" not in policy or "namespace" not in policy["metadata"]  # the namespace the rest goes to
    assert spec["policyTypes"] == ["Ingress"]
    for _, template in all_templates():
        labels = template["metadata"]["labels"]
        selected = selects(spec["podSelector"], labels)
        assert selected == (labels["app.kubernetes.io/component"] in RAY_COMPONENTS), labels
    own, operator = spec["ingress"]
    # any port, but only from this namespace's fleetscore pods (a peer without namespaceSelector is this namespace)
    assert own["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "fleetscore"}}}]
    assert "ports" not in own
    assert [p["port"] for p in operator["ports"]] == OPERATOR_PORTS
    [peer] = operator["from"]
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}
    assert all("ipBlock" not in p for rule in spec["ingress"] for p in rule["from"])
    head = of_kind("RayCluster")[0]["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert selects(spec["podSelector"], head)
    assert selects(own["from"][0]["podSelector"], named("Deployment", "fleetscore-scheduler")["spec"]["template"]
                   ["metadata"]["labels"])
