"""Leases and schedulers on PostgreSQL: a private server is started on a free loopback port.

The server runs as the ``postgres`` user when the tests run as root (initdb refuses root), with
password authentication, so the catalog URL carries a password that must never reach the logs.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
from sched_support import ROWS_PER_HOUR, check_lease_rules, check_one_winner, set_schedule_settings, us, wait_for

from fleetscore.catalog.schedules import ScheduleStore
from fleetscore.catalog.sql import Catalog
from fleetscore.core.schedule import ScheduleSpec
from fleetscore.schedule.scheduler import start_scheduler_thread

PASSWORD = "pg-s3cret-Pa55"
pytestmark = pytest.mark.backend


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    initdb, postgres = _pg_bin("initdb"), _pg_bin("postgres")
    if not (initdb and postgres):
        pytest.skip("PostgreSQL server binaries (initdb, postgres) are not installed: apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the postgres extra is not installed: pip install 'fleetscore[postgres]'")
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="fleetscore-pg-"))
    (base / "pw").write_text(PASSWORD + "\n")
    if as_root:
        shutil.chown(base, "postgres")
        shutil.chown(base / "pw", "postgres")
    port = _free_port()
    subprocess.run([*run_as, initdb, "-D", str(base / "data"), "-U", "fleet", f"--pwfile={base / 'pw'}",
                    "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"], check=True, capture_output=True)
    server = subprocess.Popen(
        [*run_as, postgres, "-D", str(base / "data"), "-p", str(port), "-h", "127.0.0.1", "-k", str(base),
         "-c", "fsync=off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"postgresql+psycopg://fleet:{PASSWORD}@127.0.0.1:{port}/postgres"
    try:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(host="127.0.0.1", port=port, user="fleet", password=PASSWORD, dbname="postgres",
                                connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()  # postgres shuts down fast on SIGTERM ("smart" → we do not wait for clients)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_catalog(pg_url: str) -> Iterator[Catalog]:
    import sqlalchemy as sa

    from fleetscore.catalog.sql import metadata

    catalog = Catalog(pg_url)
    yield catalog
    with catalog.engine.begin() as conn:  # a fresh catalog for the next test
        for table in reversed(metadata.sorted_tables):
            conn.execute(sa.delete(table))
    catalog.close()


def test_one_holder_per_key_and_takeover_after_expiry(pg_catalog: Catalog) -> None:
    check_lease_rules(pg_catalog)


def test_racing_connections_get_one_lease(pg_url: str, pg_catalog: Catalog) -> None:
    check_one_winner(pg_url)


def test_two_schedulers_on_postgres_and_no_password_in_logs(home7: Path, pg_url: str, pg_catalog: Catalog,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetscore.api import Fleet

    # the trained home's versions live in its SQLite catalog: train again into the PostgreSQL one
    monkeypatch.setenv("FLEETSCORE_CATALOG_URL", pg_url)
    set_schedule_settings(home7)
    fleets = [Fleet.open(home7) for _ in range(2)]
    fleets[0].train("2026-01-01T00:00:00Z", "2026-01-01T04:00:00Z", workers=1)
    ScheduleStore(fleets[0].catalog).add(ScheduleSpec(name="hourly", cron="5 * * * *", window_s=3600,
                                                      cursor_us=us("2026-01-01T03:30:00Z")))
    clock = lambda: us("2026-01-01T07:06:00Z")  # noqa: E731
    threads = [start_scheduler_thread(f, clock=clock) for f in fleets]
    try:
        wait_for(lambda: [w.status for w in ScheduleStore(fleets[0].catalog).windows("hourly")] == ["succeeded"] * 4,
                 what="4 windows")
    finally:
        for t in threads:
            t.stop(timeout=60)
    runs = fleets[0].runs(100)
    assert Counter(r.window_from for r in runs) == Counter({f"2026-01-01T0{h}:00:00Z": 1 for h in range(3, 7)})
    assert all(r.rows == ROWS_PER_HOUR for r in runs)
    text = "".join(p.read_text() for p in (home7 / "data" / "logs").rglob("*") if p.is_file())
    assert PASSWORD not in text and "postgresql+psycopg://fleet:***@127.0.0.1" in text
    for f in fleets:
        f.close()
