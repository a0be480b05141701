"""The ingest log under injected open/write/fsync failures (EMFILE, ENOSPC, EIO, short writes): the
batches a failure holds fail with StorageError, nothing acknowledged is lost, nothing is written
through a stale descriptor, the log reports the fault and recovers once the disk works again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_support import SHORT, FaultyOs
from ingest_support import wait_until

import fleetscore.ingest.log as log_module
from fleetscore.errors import StorageError
from fleetscore.ingest.log import SegmentLog, list_segments, read_frames, segment_name


@pytest.fixture
def faulty(monkeypatch: pytest.MonkeyPatch) -> FaultyOs:
    fake = FaultyOs()
    monkeypatch.setattr(log_module, "os", fake)
    return fake


@pytest.fixture
def log(tmp_path: Path, faulty: FaultyOs) -> Iterator[SegmentLog]:
    opened = SegmentLog(tmp_path / "log", segment_bytes=100)
    yield opened
    faulty.faults.clear()
    opened.close()


def stored(directory: Path) -> list[bytes]:
    """Every readable record of every segment, in order."""
    return [f.payload for seg in list_segments(directory) for f in read_frames(directory / segment_name(seg))[0]]


def recovered(log: SegmentLog) -> None:
    wait_until(lambda: log.fault is None, what="the log to recover")


def test_a_failed_segment_open_fails_later_batches_fast_and_is_retried(log: SegmentLog, faulty: FaultyOs,
                                                                      tmp_path: Path) -> None:
    log.append(b"a" * 40).result(timeout=30)
    faulty.faults["open"] = "EMFILE"
    log.append(b"b" * 70).result(timeout=30)  # fills the segment: it is sealed, the next cannot be created
    wait_until(lambda: log.fault is not None, what="the fault")
    assert "EMFILE" in log.fault and "Too many open files" in log.fault  # type: ignore[operator]
    unrelated = os.open(tmp_path / "unrelated", os.O_WRONLY | os.O_CREAT)  # may take the old fd's number
    try:
        with pytest.raises(StorageError, match="cannot take records now: cannot create log segment"):
            log.append(b"c" * 10)
        assert os.path.getsize(tmp_path / "unrelated") == 0  # nothing written through a stale descriptor
    finally:
        os.close(unrelated)
    attempts = faulty.injected
    wait_until(lambda: faulty.injected > attempts, what="a retry of the segment")
    faulty.faults.clear()
    recovered(log)
    log.append(b"d" * 10).result(timeout=30)
    assert stored(log.directory) == [b"a" * 40, b"b" * 70, b"d" * 10]
    assert log.failures >= 2


@pytest.mark.parametrize("fault", ["ENOSPC", "EIO", SHORT])
def test_a_failed_write_fails_only_its_batch_and_ends_the_segment(log: SegmentLog, faulty: FaultyOs,
                                                                   fault: str) -> None:
    log.append(b"a" * 20).result(timeout=30)
    segment = log.segment
    faulty.faults["write"] = fault
    with pytest.raises(StorageError, match="cannot write log segment"):
        log.append(b"b" * 20)
    faulty.faults.clear()
    recovered(log)
    assert log.segment > segment  # the segment that may end in a torn frame takes nothing more
    log.append(b"c" * 20).result(timeout=30)
    assert stored(log.directory) == [b"a" * 20, b"c" * 20]


def test_a_failed_fsync_fails_every_batch_it_holds_until_the_disk_works(log: SegmentLog, faulty: FaultyOs) -> None:
    log.append(b"a" * 20).result(timeout=30)
    faulty.faults["fsync"] = "EIO"
    with pytest.raises(StorageError, match="EIO: Input/output error; the batch was not stored"):
        log.append(b"b" * 20).result(timeout=30)
    assert log.pending == 0
    assert "cannot fsync" in log.fault  # type: ignore[operator]
    attempts = faulty.injected
    wait_until(lambda: faulty.injected > attempts, what="a probe of the disk")
    assert log.fault is not None  # the probe write is not durable either: still faulted
    with pytest.raises(StorageError, match="cannot take records now"):
        log.append(b"c" * 20)
    faulty.faults.clear()
    recovered(log)
    log.append(b"d" * 20).result(timeout=30)
    assert stored(log.directory)[0] == b"a" * 20 and stored(log.directory)[-1] == b"d" * 20
    assert not (log.directory / log_module.PROBE_NAME).exists()


def test_close_while_faulted_ends_the_committer(tmp_path: Path, faulty: FaultyOs) -> None:
    log = SegmentLog(tmp_path / "log", segment_bytes=10)
    faulty.faults["open"] = "EMFILE"
    log.append(b"a" * 20).result(timeout=30)
    wait_until(lambda: log.fault is not None, what="the fault")
    log.close()
    with pytest.raises(StorageError, match="closed"):
        log.append(b"b")
    assert stored(tmp_path / "log") == [b"a" * 20]


@pytest.mark.backend
def test_a_real_server_answers_503_while_its_log_fails_and_loses_nothing_acknowledged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import httpx
    import ingest_support
    from fault_support import set_faults
    from ingest_support import Server, arrow_body, key_set, landed, readings, recent_us
    from test_ingest_http import compact

    home = tmp_path / "home"
    home.mkdir()
    (home / "fleetscore.toml").write_text("[ingest]\nsegment_bytes = 1\n")  # every batch starts a new segment
    control = tmp_path / "faults.json"
    here = str(Path(__file__).parent)
    monkeypatch.setattr(ingest_support, "CLI", [sys.executable, "-c", (
        f"import sys; sys.path.insert(0, {here!r}); import fault_support; fault_support.install({str(control)!r}); "
        "from fleetscore.cli.main import main; main()")])
    server = Server(home, "--compact-interval", "0")
    start, sent, acked = recent_us(), 0, []

    def post() -> httpx.Response:
        nonlocal sent
        batch = readings(start + sent * 60_000_000, 20, seed=sent)
        sent += 1
        r = httpx.post(f"{server.url}/v1/readings", content=arrow_body(batch), timeout=30,
                       headers={"Content-Type": "application/vnd.apache.arrow.stream"})
        if r.status_code == 202:
            acked.append(batch)
        return r

    def healthy() -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith("fleetscore_ingest_healthy ")))

    try:
        assert post().status_code == 202 and healthy() == 1
        for call, name, text in (("open", "EMFILE", "Too many open files"), ("write", "ENOSPC", "No space left"),
                                 ("fsync", "EIO", "Input/output error")):
            set_faults(control, **{call: name})
            refused = next(r for r in (post() for _ in range(3)) if r.status_code != 202)
            assert refused.status_code == 503 and "not stored" in refused.json()["detail"], refused.text
            health = httpx.get(f"{server.url}/healthz", timeout=30)
            assert health.status_code == 503 and f"{name}: {text}" in health.json()["reason"], health.text
            assert healthy() == 0
            set_faults(control)
            wait_until(lambda: httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200,
                       what=f"the server to recover from {name}")
            assert post().status_code == 202 and healthy() == 1
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert "fleetscore_ingest_log_failures_total" in metrics
    finally:
        server.stop()
    compact(home)
    got = key_set(landed(home))
    assert len(acked) >= 5
    for batch in acked:
        assert all(got[k] == 1 for k in key_set(batch))
