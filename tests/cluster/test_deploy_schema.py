"""The manifests under ``deploy/`` against the Kubernetes API's JSON schemas (``kubernetes-validate``, which ships
them: no network), strictly, so a misspelt or misplaced field fails here rather than at ``kubectl apply``.

KubeRay's kinds (RayCluster, RayJob) have no schema here (KubeRay's CRDs are not in a package this project
can install); their pod templates and the autoscaler's security context are core types and are validated."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from deploy_manifests import documents, of_kind, pod_templates

#: The Kubernetes version the manifests are validated against: the oldest one they are meant to run on.
KUBERNETES_VERSION = "1.30"
KUBERAY_KINDS = ("RayCluster", "RayJob")


def core_documents() -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] not in KUBERAY_KINDS]


@pytest.mark.parametrize("doc", core_documents(), ids=lambda d: f"{d['kind']}-{d['metadata'].get('name', 'generated')}")
def test_core_kinds_validate_strictly(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_core_kinds_cover_every_workload() -> None:
    kinds = {d["kind"] for d in core_documents()}
    assert {"ConfigMap", "Deployment", "Service", "Job", "NetworkPolicy", "PersistentVolumeClaim"} <= kinds


def as_pod_template(template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}


def test_kuberay_pod_templates_validate_as_core_pod_templates() -> None:
    found = [t for kind in KUBERAY_KINDS for d in of_kind(kind) for t in pod_templates(d)]
    assert len(found) == 3  # head, the score worker group, the backfill submitter
    for template in found:
        kubernetes_validate.validate(as_pod_template(template), KUBERNETES_VERSION, strict=True)
    [cluster] = of_kind("RayCluster")
    autoscaler = {"spec": {"containers": [{"name": "autoscaler",
                                           "securityContext": cluster["spec"]["autoscalerOptions"]["securityContext"],
                                           "resources": cluster["spec"]["autoscalerOptions"]["resources"]}]}}
    kubernetes_validate.validate(as_pod_template(autoscaler), KUBERNETES_VERSION, strict=True)


def test_a_misplaced_field_fails() -> None:
    [doc] = [d for d in core_documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "fleetscore-scheduler"]
    doc["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
