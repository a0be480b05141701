"""Stream message groups: every format, ids from headers or key, and bad messages traced to their position."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from ingest_support import arrow_body

from fleetscore.config.ingest import IngestSettings
from fleetscore.errors import InputError
from fleetscore.ingest.messages import StreamMessage, parse_group
from fleetscore.ingest.service import IngestService
from fleetscore.ingest.streams import source_name

ARROW = "application/vnd.apache.arrow.stream"


@pytest.fixture
def service(tmp_path: Path):  # type: ignore[no-untyped-def]
    svc = IngestService(tmp_path, IngestSettings(), "kafka:g:m")
    yield svc
    svc.close()


def at(n: int) -> str:
    return f"topic=t partition=0 offset={n}"


def test_a_mixed_group_keeps_good_rows_and_traces_every_bad_one(service) -> None:  # type: ignore[no-untyped-def]
    ts = pa.array([1_700_000_000_000_000] * 2, pa.timestamp("us", "UTC"))
    msgs = [
        StreamMessage(b'{"ts": 1700000000, "value": 1.5}', at(0), None, "d1", "s1"),
        StreamMessage(b"not json", at(1), None, "d1", "s1"),
        StreamMessage(b'[{"ts": 1700000001, "value": "x", "device": "own", "sensor": "s"}, {"ts": 1700000002, "value": 3}]',
                      at(2), None, "d9", "s9"),
        StreamMessage(arrow_body(pa.table({"ts": ts, "value": [1.0, float("nan")]})), at(3), ARROW, "d3", "s3"),
        StreamMessage(b"ts,value\n2023-11-14T22:13:20Z,4\n", at(4), "text/csv", "d4", "s4"),
        StreamMessage(b"x" * 2000, at(5), None, None, None),
        StreamMessage(b"{}", at(6), "text/plain", None, None),
    ]
    batch = parse_group(msgs, "json", 1000, 100).admit(service)
    good = sorted(zip(*(batch.good.column(c).to_pylist() for c in ("device", "sensor", "value"))))
    assert good == [("d1", "s1", 1.5), ("d3", "s3", 1.0), ("d4", "s4", 4.0), ("d9", "s9", 3.0)]
    rejected = {(r["row"], r["reason"].split(":", 1)[0]): r["reason"] for r in batch.rejected.to_pylist()}
    assert set(rejected) == {(0, at(1)), (0, at(2)), (1, at(3)), (0, at(5)), (0, at(6))}
    assert "not valid JSON" in rejected[(0, at(1))]
    assert "not a number" in rejected[(0, at(2))]  # the reading's own device wins; its value is bad
    assert "limit is 1,000" in rejected[(0, at(5))]
    assert "text/plain" in rejected[(0, at(6))]


def test_too_many_readings_in_one_message_and_an_empty_group(service) -> None:  # type: ignore[no-untyped-def]
    body = b"[" + b",".join(b'{"ts": 1700000000, "value": 1}' for _ in range(5)) + b"]"
    batch = parse_group([StreamMessage(body, at(9), None, "d", "s")], "json", 10_000, 4).admit(service)
    assert batch.good.num_rows == 0 and "limit is 4" in batch.rejected.column("reason")[0].as_py()
    empty = parse_group([], "json", 1000, 10).admit(service)
    assert empty.good.num_rows == 0 and empty.rejected.num_rows == 0


def test_csv_and_arrow_without_ids_need_them_from_the_message(service) -> None:  # type: ignore[no-untyped-def]
    batch = parse_group([StreamMessage(b"ts,value\n2023-11-14T22:13:20Z,4\n", at(1), "text/csv")], "json", 1000, 10
                        ).admit(service)
    assert batch.good.num_rows == 0 and "device" in batch.rejected.column("reason")[0].as_py()


@pytest.mark.parametrize("name, member", [("g g", "m"), ("g", "m/1"), ("x" * 65, "m"), ("", "m")])
def test_bad_group_or_member_names_are_refused(name: str, member: str) -> None:
    with pytest.raises(InputError, match="letters, digits"):
        source_name("kafka", name, member)
    assert source_name("nats", "D-1", "host.a") == "nats:D-1:host.a"
