"""Request bodies and admission: every format, per-row errors at the right input index, hard failures."""

from __future__ import annotations

import pyarrow as pa
import pytest
from ingest_support import arrow_body, readings

from fleetscore.core.admission import DUPLICATE_REASON, admit_readings
from fleetscore.ingest.mqtt import Broker, parse_messages
from fleetscore.ingest.parse import BodyError, BodyTooLarge, UnsupportedMediaType, media_kind, parse_body

NOW = 1_767_225_600_000_000  # 2026-01-01
HOUR = 3_600_000_000


def admitted(body: bytes, kind: str):  # type: ignore[no-untyped-def]
    """Parse + admit as the service does: (good table, {input index: reason})."""
    parsed = parse_body(body, kind, 1000)
    out = admit_readings(parsed.table, NOW, HOUR)
    rows = out.rejected.column("row").to_numpy()
    if parsed.rows is not None:
        rows = parsed.rows[rows]
    errors = dict(zip(rows.tolist(), out.rejected.column("reason").to_pylist()))
    errors.update({i: reason for i, _, reason in parsed.errors})
    return out.good, errors


def test_json_keeps_good_rows_and_names_each_bad_one() -> None:
    body = (b'[{"ts": "2026-01-01T00:00:00Z", "device": "d", "sensor": "s", "value": 1.5},'
            b' {"ts": "yesterday", "device": "d", "sensor": "s", "value": 1},'
            b' 7,'
            b' {"ts": 1767225601, "device": "d", "sensor": "s", "value": "2.5"},'
            b' {"ts": "2026-01-01T00:00:00Z", "device": "d", "sensor": "s", "value": 9},'
            b' {"ts": "2026-01-01T00:00:02Z", "device": "", "sensor": "s", "value": {"nested": true}},'
            b' {"ts": "2026-01-01T00:00:03Z", "device": "d\\u0000x", "sensor": "s", "value": 1},'
            b' {"ts": "2026-01-01T09:00:00Z", "device": "d", "sensor": "s", "value": 1}]')
    good, errors = admitted(body, "json")
    assert good.column("value").to_pylist() == [1.5, 2.5]
    assert errors[1].startswith("timestamp is not")
    assert errors[2] == "reading is not a JSON object"
    assert errors[4] == DUPLICATE_REASON
    assert errors[5] == "device id is empty"
    assert errors[6] == "device id contains control characters"
    assert "future" in errors[7] or "after the receive time" in errors[7]
    assert sorted(errors) == [1, 2, 4, 5, 6, 7]


def test_ndjson_bad_lines_are_row_errors() -> None:
    body = b'{"ts": "2026-01-01T00:00:00Z", "device": "d", "sensor": "s", "value": 1}\n\nnot json\n' \
           b'{"ts": "2026-01-01T00:00:01Z", "device": "d", "sensor": "s", "value": NaN}\n' \
           b'{"ts": "2026-01-01T00:00:02Z", "device": "d", "sensor": "s", "value": "NaN"}\n'
    good, errors = admitted(body, "ndjson")
    assert good.num_rows == 1
    assert errors[1].startswith("line is not valid JSON") and errors[2].startswith("line is not valid JSON")
    assert errors[3] == "value is not finite (NaN or inf)"


def test_csv_malformed_rows_keep_their_index() -> None:
    body = (b"TS,Device,Tag,Value\n2026-01-01T00:00:00Z,d,s,1\n2026-01-01T00:00:01Z,d,s\n"
            b"2026-01-01T00:00:02Z,d,s,inf\n2026-01-01T00:00:03Z,d,s,4\n")
    good, errors = admitted(body, "csv")
    assert good.column("value").to_pylist() == [1.0, 4.0]
    assert errors[1].startswith("malformed CSV row") and errors[2] == "value is not finite (NaN or inf)"


def test_arrow_stream_roundtrip_and_typed_columns() -> None:
    table = readings(NOW - HOUR, 50)
    good, errors = admitted(arrow_body(table), "arrow")
    assert errors == {} and good.equals(table.cast(good.schema))


@pytest.mark.parametrize("body,kind,needle", [
    (b"", "json", "empty"),
    (b"{", "json", "not valid JSON"),
    (b'{"ts": 1}', "json", "JSON array"),
    (b"a,b\n1,2\n", "csv", "header"),
    (b"\x00\x01garbage", "arrow", "Arrow IPC"),
    (b"[" + b"{}," * 1000 + b"{}]", "json", "limit"),
])
def test_unparseable_bodies_raise_body_errors(body: bytes, kind: str, needle: str) -> None:
    with pytest.raises(BodyError) as err:
        parse_body(body, kind, 1000)
    assert needle in str(err.value)


def test_arrow_missing_columns_and_row_limit() -> None:
    with pytest.raises(BodyError, match="lacks column"):
        parse_body(arrow_body(pa.table({"ts": [1], "value": [1.0]})), "arrow", 10)
    with pytest.raises(BodyTooLarge):
        parse_body(arrow_body(readings(NOW, 11)), "arrow", 10)


def test_content_types() -> None:
    assert media_kind("application/json; charset=utf-8") == "json"
    assert media_kind("Text/CSV") == "csv"
    assert media_kind("application/vnd.apache.arrow.stream") == "arrow"
    for bad in (None, "", "text/plain", "application/x-www-form-urlencoded"):
        with pytest.raises(UnsupportedMediaType):
            media_kind(bad)


def test_mqtt_messages_become_rows_with_ids_from_the_topic() -> None:
    parsed = parse_messages([
        ("fleet/pump-1/temp", b'{"ts": "2026-01-01T00:00:00Z", "value": 1}'),
        ("fleet/pump-1/temp", b"not json"),
        ("fleet/pump-2/rpm", b'[{"ts": "2026-01-01T00:00:00Z", "value": 2, "device": "spoofed"}, 3]'),
    ])
    out = admit_readings(parsed.table, NOW, HOUR)
    assert list(zip(out.good.column("device").to_pylist(), out.good.column("sensor").to_pylist())) == [
        ("pump-1", "temp"), ("pump-2", "rpm")]
    indexes = {i: reason for i, _, reason in parsed.errors}
    assert indexes[1].startswith("payload is not valid JSON")
    assert indexes[3] == "reading is not a JSON object" and out.rejected.num_rows == 0
    assert parsed.rows is not None and parsed.rows.tolist() == [0, 2]


@pytest.mark.parametrize("url", ["http://h:1", "mqtt://", "mqtt://user:pw@h:1", "mqtt://h:99999", "mqtt://h/x"])
def test_bad_broker_urls(url: str) -> None:
    from fleetscore.errors import InputError

    with pytest.raises(InputError):
        Broker.parse(url)
    assert Broker.parse("mqtt://127.0.0.1:1884") == Broker("127.0.0.1", 1884)
