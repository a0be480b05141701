"""Real backends for the cluster tests, started here on free loopback ports and stopped at the end.

* ``ray_cluster``: ``ray start --head`` plus a second worker node, both on 127.0.0.2 (Ray rewrites
  127.0.0.1 to the machine's external address), token auth off, its own temp dir; stopped by
  signalling only the processes of that temp dir and port (``ray stop`` would stop every Ray on
  the machine).
* ``moto``: ``moto_server`` (S3); ``azurite``: Azurite's blob service from ``.tools/`` (npm).
* ``catalog_url``: a SQLite file, and a fresh schema on the PostgreSQL server at localhost:5432
  (database ``test``) when one answers; the schema is dropped at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RAY_HOST = "127.0.0.2"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PG_SERVER = ("localhost", 5432)
PG_USERS = ("postgres", "root")
CLOUD_ENV = ("AWS_", "AZURE_")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {host}:{port}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without cloud credentials (so servers and Ray nodes never inherit them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLOUD_ENV) and k != "RAY_ADDRESS"}
    return env | extra


# --- Ray ------------------------------------------------------------------------------------------
@dataclass
class RayCluster:
    address: str
    client_address: str
    temp_dir: str
    node_env: dict[str, str] = field(default_factory=dict)

    def pids(self) -> set[int]:
        """Processes of this cluster: those naming its temp dir or address, and all their descendants."""
        procs: dict[int, tuple[int, str]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace")
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(name)] = (ppid, cmd)
        mine, pid = set(), os.getpid()
        while pid > 1:  # this test process and its ancestors name the temp dir too (argv, env): spare them
            mine.add(pid)
            pid = procs.get(pid, (0, ""))[0]
        names = re.compile(re.escape(self.temp_dir) + "|" + re.escape(self.address) + r"(?!\d)")
        found = {p for p, (_, cmd) in procs.items() if names.search(cmd) and p not in mine}
        grew = True
        while grew:
            children = {p for p, (ppid, _) in procs.items() if ppid in found and p not in found and p not in mine}
            found |= children
            grew = bool(children)
        return found

    def busy_workers(self) -> list[int]:
        """Worker processes of this cluster running a fleetscore task now (Ray titles them ``ray::<task>``)."""
        out = []
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::fleetscore."):
                    out.append(pid)
            except OSError:
                continue
        return out

    def stop(self) -> None:
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _ray(args: list[str], env: dict[str, str], timeout: float) -> None:
    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    done = subprocess.run(["timeout", str(int(timeout)), ray_bin, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args[:2])} failed ({done.returncode}): {done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A two-node Ray cluster (head + worker, one CPU each) on 127.0.0.2; the driver env disables token auth."""
    if shutil.which("ray") is None and not Path(sys.executable).with_name("ray").exists():
        pytest.skip("ray is not installed (pip install 'fleetscore[ray]')")
    temp_dir = tempfile.mkdtemp(prefix="fsray-")  # short: Ray's socket paths must fit in 107 bytes
    port, client_port = free_port(RAY_HOST), free_port(RAY_HOST)
    env = clean_env(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cluster = RayCluster(f"{RAY_HOST}:{port}", f"ray://{RAY_HOST}:{client_port}", temp_dir, env)
    common = [f"--node-ip-address={RAY_HOST}", "--num-cpus=1", f"--temp-dir={temp_dir}",
              "--object-store-memory=100000000", "--disable-usage-stats"]
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    try:
        _ray(["start", "--head", f"--port={port}", f"--ray-client-server-port={client_port}",
              "--include-dashboard=false", *common], env, 120)
        _ray(["start", f"--address={cluster.address}", *common], env, 120)
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ.pop("RAY_ADDRESS", None)
        yield cluster
    finally:
        _disconnect_driver()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        cluster.stop()


def _disconnect_driver() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


# --- object stores --------------------------------------------------------------------------------
@dataclass
class ObjectStore:
    """An emulator and the environment that points fleetscore at it; ``bucket()`` makes a new bucket."""

    scheme: str
    env: dict[str, str]

    def bucket(self) -> str:
        """A new, empty bucket (S3) or container (Azure); returns its ``scheme://name`` URL."""
        import fsspec

        name = f"fs{uuid.uuid4().hex[:12]}"
        options = ({"client_kwargs": {"endpoint_url": self.env["AWS_ENDPOINT_URL"]}, "key": self.env["AWS_ACCESS_KEY_ID"],
                    "secret": self.env["AWS_SECRET_ACCESS_KEY"]} if self.scheme == "s3"
                   else {"connection_string": self.env["AZURE_STORAGE_CONNECTION_STRING"]})
        fs = fsspec.filesystem(self.scheme, skip_instance_cache=True, **options)
        fs.mkdir(name)
        return f"{self.scheme}://{name}"


@pytest.fixture(scope="module")
def moto() -> Iterator[ObjectStore]:
    """moto_server (S3) on a free loopback port; credentials are any values (moto does not check them)."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(exe).exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, proc)
        yield ObjectStore("s3", {
            "AWS_ACCESS_KEY_ID": "fleetscore-test", "AWS_SECRET_ACCESS_KEY": f"s3-secret-{uuid.uuid4().hex}",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        })
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def azurite() -> Iterator[ObjectStore]:
    """Azurite's blob service (in memory) on a free loopback port, with the well-known dev account."""
    exe = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    if not exe.exists() or shutil.which("node") is None:
        pytest.skip("azurite is not installed: cd .tools && npm install azurite@3 (scripts/test.sh does it)")
    port = free_port()
    # the bin script is a node script: Popen runs node itself, so proc.pid is the server's pid
    proc = subprocess.Popen(
        [str(exe), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence", "--silent",
         "--skipApiVersionCheck", "--disableTelemetry"],
        env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", port, proc)
        yield ObjectStore("az", {"AZURE_STORAGE_CONNECTION_STRING": (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")})
    finally:
        stop_process(proc)


@pytest.fixture(params=["moto", "azurite"])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """S3 or Azure, with its credentials in this process's environment (and nowhere else)."""
    backend = request.getfixturevalue(request.param)
    for name, value in backend.env.items():
        monkeypatch.setenv(name, value)
    return backend


# --- catalogs -------------------------------------------------------------------------------------
def postgres_url() -> str | None:
    """``postgresql+psycopg://USER@localhost:5432/test`` for the first user that can connect, else None."""
    try:
        import psycopg
    except ImportError:
        return None
    for user in PG_USERS:
        try:
            psycopg.connect(host=PG_SERVER[0], port=PG_SERVER[1], user=user, dbname="test", connect_timeout=3).close()
        except psycopg.Error:
            continue
        return f"postgresql+psycopg://{user}@{PG_SERVER[0]}:{PG_SERVER[1]}/test"
    return None


@pytest.fixture(scope="session")
def postgres_server() -> str | None:
    return postgres_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_server: str | None) -> Iterator[str]:
    """A fresh, empty catalog database: a SQLite file, or a new schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    if postgres_server is None:
        pytest.skip(f"no PostgreSQL server reachable at {PG_SERVER[0]}:{PG_SERVER[1]} (database test)")
    import sqlalchemy as sa

    schema = f"fleetscore_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{postgres_server}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
