"""The container image recipe and the KubeRay manifests: parsed and checked, since neither Docker nor a
Kubernetes cluster is available to the tests (image, entrypoint, resources, scale-to-zero, no secrets)."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fleetscore import __version__
from fleetscore.cli.main import app
from fleetscore.credentials import CREDENTIAL_ENV

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kuberay"
IMAGE = f"fleetscore:{__version__}"


def documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container spec anywhere in a manifest."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "containers":
                yield from value
            else:
                yield from containers(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from containers(item)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_slim_base_non_root_user_extras_and_entrypoint() -> None:
    steps = dockerfile()
    froms = [args for op, args in steps if op == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    # every extra (ray, s3, azure, postgres among them) from the lock, then the package without resolving
    assert any("--require-hashes -r requirements/all.lock" in args for args in installs)
    assert any(args.endswith("pip install --no-deps .") for args in installs)
    lock = (REPO / "requirements" / "all.lock").read_text()
    assert all(re.search(rf"^{name}==", lock, re.M) for name in ("ray", "s3fs", "adlfs", "psycopg"))
    entrypoint = [yaml.safe_load(args) for op, args in final if op == "ENTRYPOINT"]
    assert entrypoint == [["fleetscore"]]
    assert "fleetscore" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "wget" in " ".join(args for op, args in final if op == "RUN")  # KubeRay's probes use it


def test_ray_cluster_autoscales_workers_from_zero() -> None:
    [cluster] = of_kind("RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert 0 < spec["autoscalerOptions"]["idleTimeoutSeconds"] <= 600
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head never holds tasks up
    groups = spec["workerGroupSpecs"]
    assert groups and all(g["minReplicas"] == 0 and g.get("replicas", 0) == 0 and g["maxReplicas"] >= 1 for g in groups)
    ports = {p["containerPort"] for c in containers(spec["headGroupSpec"]) for p in c.get("ports", [])}
    assert 10001 in ports  # Ray Client, which the hourly driver connects to


def test_every_pod_runs_the_fleetscore_image_with_resources_and_no_root() -> None:
    docs = documents()
    found = [c for d in docs for c in containers(d)]
    assert len(found) >= 3
    for c in found:
        assert c["image"] == IMAGE, c["name"]
        resources = c["resources"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[part]), (c["name"], part)
    workers = [c for g in of_kind("RayCluster")[0]["spec"]["workerGroupSpecs"] for c in containers(g)]
    assert all(c["resources"]["requests"] == c["resources"]["limits"] for c in workers)  # Ray counts the limits
    for d in docs:
        for spec in _pod_specs(d):
            assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    [kustomization] = of_kind("Kustomization") or [yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())]
    assert {i["name"] for i in kustomization["images"]} == {"fleetscore"}


def _pod_specs(doc: Any) -> Iterator[dict[str, Any]]:
    if isinstance(doc, dict):
        if "containers" in doc:
            yield doc
        for value in doc.values():
            yield from _pod_specs(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _pod_specs(item)


def test_hourly_cron_job_scores_the_last_hour_on_the_cluster() -> None:
    [cron] = of_kind("CronJob")
    spec = cron["spec"]
    minute, *rest = spec["schedule"].split()
    assert minute.isdigit() and rest == ["*", "*", "*", "*"]  # once an hour
    assert spec["concurrencyPolicy"] == "Forbid"
    [container] = containers(spec)
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0]
    words = shlex.split(script)
    assert words[:3] == ["exec", "fleetscore", "score"]
    # the shell expansions produce the hour that just ended, in the form --from/--to accept
    bounds = [subprocess.run(["sh", "-c", f"echo {w}"], capture_output=True, text=True, check=True).stdout.strip()
              for w in re.findall(r'"(\$\(date [^"]+\))"', script)]
    assert len(bounds) == 2
    lo, hi = (datetime.fromisoformat(b.replace("Z", "+00:00")) for b in bounds)
    assert (hi - lo).total_seconds() == 3600 and hi.minute == 0
    assert_cli_accepts(words[2], words[3:])
    env = {e["name"]: e["value"] for e in container["env"]}
    cluster = of_kind("RayCluster")[0]["metadata"]["name"]
    assert env["FLEETSCORE_RAY_ADDRESS"] == f"ray://{cluster}-head-svc:10001"


def test_backfill_ray_job_targets_the_cluster() -> None:
    [job] = of_kind("RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": of_kind("RayCluster")[0]["metadata"]["name"]}
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["fleetscore", "score"]
    assert_cli_accepts(words[1], words[2:])


def assert_cli_accepts(command: str, args: list[str]) -> None:
    """Every ``--flag`` the manifest passes is an option of ``fleetscore COMMAND``."""
    flags = {a for a in args if a.startswith("--")}
    help_text = CliRunner().invoke(app, [command, "--help"], terminal_width=200).stdout
    assert flags and flags <= set(re.findall(r"--[a-z][a-z-]*", help_text)), flags


def test_manifests_hold_no_credentials() -> None:
    """Credentials come from the fleetscore-env Secret, never from a value written in a manifest."""
    for doc in documents():
        for c in containers(doc):
            for e in c.get("env", []):
                assert e["name"] not in CREDENTIAL_ENV and "CATALOG_URL" not in e["name"], e["name"]
        if doc["kind"] == "ConfigMap":
            assert not set(doc["data"]) & (set(CREDENTIAL_ENV) - {"AWS_DEFAULT_REGION", "AWS_REGION"})
            assert "FLEETSCORE_CATALOG_URL" not in doc["data"]
        assert doc["kind"] != "Secret"


@pytest.mark.parametrize("name", ["docs/cluster.md"])
def test_cluster_docs_name_every_manifest(name: str) -> None:
    text = (REPO / name).read_text()
    for path in DEPLOY.glob("*.yaml"):
        assert path.name in text
