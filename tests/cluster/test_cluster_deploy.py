"""The container image recipe and the KubeRay manifests: parsed and checked, since neither Docker nor a
Kubernetes cluster is available to the tests (image, entrypoint, resources, scale-to-zero, the workloads'
commands against the CLI, no window derived from a pod's start, no secrets). Pod security and the
NetworkPolicy: ``test_deploy_security.py``; the Kubernetes schemas: ``test_deploy_schema.py``."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_manifests import DEPLOY, REPO, assert_cli_accepts, containers, documents, named, of_kind, only_container

from fleetscore import __version__
from fleetscore.credentials import CREDENTIAL_ENV

IMAGE = f"fleetscore:{__version__}"
#: Manifests applied by hand (each `kubectl create` is a new run; the stream consumer once a broker exists).
BY_HAND = {"train-job.yaml", "rayjob-backfill.yaml", "ingest-kafka.yaml"}


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


def image_env() -> dict[str, str]:
    """The ``ENV`` settings of the image's final stage."""
    final = [args for op, args in dockerfile() if op == "ENV"]
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(final)))


def test_ray_cluster_autoscales_workers_from_zero() -> None:
    [cluster] = of_kind("RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert 0 < spec["autoscalerOptions"]["idleTimeoutSeconds"] <= 600
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head never holds tasks up
    groups = spec["workerGroupSpecs"]
    assert groups and all(g["minReplicas"] == 0 and g.get("replicas", 0) == 0 and g["maxReplicas"] >= 1 for g in groups)
    ports = {p["containerPort"] for c in containers(spec["headGroupSpec"]) for p in c.get("ports", [])}
    assert {6379, 8265} <= ports  # GCS, which the drivers join; the Jobs API, which RayJobs use


def test_every_pod_runs_the_fleetscore_image_with_resources() -> None:
    found = [c for d in documents() for c in containers(d)]
    assert len(found) >= 8
    for c in found:
        assert c["image"] == IMAGE, c["name"]
        resources = c["resources"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[part]), (c["name"], part)
    workers = [c for g in of_kind("RayCluster")[0]["spec"]["workerGroupSpecs"] for c in containers(g)]
    assert all(c["resources"]["requests"] == c["resources"]["limits"] for c in workers)  # Ray counts the limits
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert {i["name"] for i in kustomization["images"]} == {"fleetscore"}


def test_kustomization_applies_every_standing_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    manifests = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests - BY_HAND
    assert BY_HAND <= manifests
    for doc in documents():  # `kubectl apply` needs a name; the by-hand runs get a fresh one per create
        assert ("generateName" in doc["metadata"]) == (doc["kind"] in ("Job", "RayJob")), doc["kind"]


def test_no_workload_derives_a_window_from_the_clock() -> None:
    """Windows come from the schedules in the catalog, never from ``date`` at a pod's start (the old CronJob)."""
    assert not of_kind("CronJob")
    for doc in documents():
        for c in containers(doc):
            words = " ".join(c.get("command", []) + c.get("args", []))
            assert "$(date" not in words and "`date" not in words, c["name"]


def ray_joined(container: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A driver container's two steps: ``ray start`` (join the cluster as a node) and the fleetscore command."""
    assert container["command"] == ["/bin/sh", "-c"]
    join, sep, run = container["args"][0].partition("&&")
    assert sep, container["args"]
    return shlex.split(join), shlex.split(run)


def test_scheduler_deployment_drives_ray_directly() -> None:
    deployment = named("Deployment", "fleetscore-scheduler")
    assert deployment["spec"]["replicas"] == 1
    join, run = ray_joined(only_container(deployment))
    assert run[:3] == ["exec", "fleetscore", "scheduler"]
    assert_cli_accepts(["scheduler"], run[3:])
    assert join[:2] == ["ray", "start"] and "--num-cpus=0" in join  # a node of its own, running no task
    assert "--address=$FLEETSCORE_RAY_ADDRESS" in join
    config = named("ConfigMap", "fleetscore-config")["data"]
    cluster = of_kind("RayCluster")[0]["metadata"]["name"]
    assert config["FLEETSCORE_RAY_ADDRESS"] == f"{cluster}-head-svc:6379"  # the head's GCS, not ray:// Ray Client
    assert config["FLEETSCORE_EXECUTOR"] == "ray"


@pytest.mark.slow
def test_drivers_join_ray_with_options_ray_start_takes() -> None:
    scripts = pytest.importorskip("ray.scripts.scripts")
    options = {o for p in scripts.start.params for o in p.opts}
    joins = [ray_joined(only_container(d))[0] for d in (named("Deployment", "fleetscore-scheduler"),
                                                        named("Job", "fleetscore-train-"))]
    assert joins[0] == joins[1]  # one way to join, for every driver pod
    assert {w.split("=")[0] for w in joins[0][2:]} <= options


def test_scheduler_init_adds_the_hourly_schedule_once(tmp_path: Path) -> None:
    """The init container's script, run twice against one home: one schedule, and a restart passes."""
    [init] = named("Deployment", "fleetscore-scheduler")["spec"]["template"]["spec"]["initContainers"]
    assert init["command"] == ["/bin/sh", "-c"]
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "FLEETSCORE_HOME": str(tmp_path / "home")}
    for _ in range(2):
        done = subprocess.run(["/bin/sh", "-c", init["args"][0]], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    listed = subprocess.run(["fleetscore", "schedule", "list", "--json"], env=env, capture_output=True, text=True,
                            check=True, timeout=300)
    [schedule] = json.loads(listed.stdout)["schedules"]
    assert (schedule["name"], schedule["kind"], schedule["cron"], schedule["window"]) == ("hourly", "score", "5 * * * *", "1h")


def test_training_job_trains_on_ray() -> None:
    join, run = ray_joined(only_container(named("Job", "fleetscore-train-")))
    assert run[:3] == ["exec", "fleetscore", "train"]
    assert run[run.index("--executor") + 1] == "ray"
    assert_cli_accepts(["train"], run[3:])


def test_http_ingest_serves_its_log_volume_behind_a_service() -> None:
    deployment = named("Deployment", "fleetscore-ingest-http")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"  # one writer of the log
    container = only_container(deployment)
    args = container["args"]
    assert args[0] == "serve"
    assert_cli_accepts(["serve"], args[1:])
    assert args[args.index("--host") + 1] == "0.0.0.0"
    [port] = container["ports"]
    assert port["containerPort"] == int(args[args.index("--port") + 1])
    assert {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")} == {"/healthz"}
    assert_log_on_claim(deployment)
    [service] = of_kind("Service")
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]


def test_kafka_consumer_keeps_one_member_and_its_log() -> None:
    deployment = named("Deployment", "fleetscore-ingest-kafka")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    args = only_container(deployment)["args"]
    assert args[:2] == ["ingest", "kafka"]
    assert_cli_accepts(["ingest", "kafka"], args[2:])
    assert args[args.index("--member") + 1]  # not the pod's host name: a restarted pod reopens its log
    assert_log_on_claim(deployment)


def assert_log_on_claim(deployment: dict[str, Any]) -> None:
    """The pod's home (where the durable ingest log lives) is a PersistentVolumeClaim of these manifests."""
    pod = deployment["spec"]["template"]["spec"]
    [mount] = only_container(deployment)["volumeMounts"]
    assert mount["mountPath"] == image_env()["FLEETSCORE_HOME"]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claims = {c["metadata"]["name"] for c in of_kind("PersistentVolumeClaim")}
    assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_backfill_ray_job_targets_the_cluster() -> None:
    [job] = of_kind("RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": of_kind("RayCluster")[0]["metadata"]["name"]}
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["fleetscore", "backfill"]
    assert_cli_accepts(["backfill"], words[2:])


def test_manifests_hold_no_credentials() -> None:
    """Credentials come from the fleetscore-env Secret, never from a value written in a manifest."""
    secret_names = set(CREDENTIAL_ENV) | {"FLEETSCORE_CATALOG_URL", "FLEETSCORE_TOKEN", "FLEETSCORE_KAFKA_PASSWORD",
                                          "FLEETSCORE_KAFKA_CONNECTION_STRING"}
    for doc in documents():
        for c in containers(doc):
            for e in c.get("env", []):
                assert e["name"] not in secret_names, e["name"]
            assert all("secretRef" in s or "configMapRef" in s for s in c.get("envFrom", []))
        if doc["kind"] == "ConfigMap":
            assert not set(doc["data"]) & (secret_names - {"AWS_DEFAULT_REGION", "AWS_REGION"})
        assert doc["kind"] != "Secret"


@pytest.mark.parametrize("name", ["docs/cluster.md"])
def test_cluster_docs_name_every_manifest(name: str) -> None:
    text = (REPO / name).read_text()
    for path in DEPLOY.glob("*.yaml"):
        assert path.name in text


def test_ray_version_of_the_cluster_is_the_image_lock_s() -> None:
    """KubeRay starts the head and workers with the Ray the image holds: rayVersion must name it."""
    [cluster] = of_kind("RayCluster")
    [locked] = re.findall(r"^ray==(\S+)", (REPO / "requirements" / "all.lock").read_text(), re.M)
    assert cluster["spec"]["rayVersion"] == locked
