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
            b' {"ts": "2026-01-01T00:00:02Z", "device": "", "sensor": "s", "value": 2},'
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


@pytest.mark.parametrize("url", ["http://h:1", "mqtt://", "mqtt://user:hunter22@h:99999", "mqtt://h:99999",
                                 "mqtt://h/x", "mqtts://user:hunter22@h/x?y", "user:hunter22@h:1"])
def test_bad_broker_urls(url: str) -> None:
    from fleetscore.errors import InputError

    with pytest.raises(InputError) as info:
        Broker.build(url)
    assert "hunter22" not in str(info.value)
    assert Broker.build("mqtt://127.0.0.1:1884") == Broker("127.0.0.1", 1884)
    assert Broker.build("mqtt://u:p%40ss@h") == Broker("h", 1883, None, "u", "p@ss")


def one(value: object) -> bytes:
    """A JSON batch of one reading with this raw ``value`` text."""
    return b'[{"ts": "2026-01-01T00:00:00Z", "device": "d", "sensor": "s", "value": ' + str(value).encode() + b"}]"


@pytest.mark.parametrize("n", [2**53 + 1, 2**63 - 1, -(2**63), 2**64, 2**70, -(2**70)])
def test_json_integers_of_any_size_become_float64(n: int) -> None:
    good, errors = admitted(one(n), "json")
    assert errors == {} and good.column("value").to_pylist() == [float(n)]


def test_arrow_integers_of_any_width_become_float64() -> None:
    ts = pa.array([NOW] * 3, pa.timestamp("us", tz="UTC"))
    for values, t in (([2**63 - 1, -(2**63), 2**53 + 1], pa.int64()), ([2**64 - 1, 2**63, 0], pa.uint64())):
        table = pa.table({"ts": ts, "device": ["a", "b", "c"], "sensor": ["s"] * 3, "value": pa.array(values, t)})
        good, errors = admitted(arrow_body(table), "arrow")
        assert errors == {} and good.column("value").to_pylist() == [float(v) for v in values]


def test_sub_microsecond_timestamps_are_truncated_and_collisions_are_duplicates() -> None:
    ns = NOW * 1000
    table = pa.table({"ts": pa.array([ns + 1, ns + 999, ns + 1_000, ns + 2_500], pa.timestamp("ns")),  # pandas' default unit
                      "device": ["d"] * 4, "sensor": ["s"] * 4, "value": [1.0, 2.0, 3.0, 4.0]})
    good, errors = admitted(arrow_body(table), "arrow")
    assert good.column("ts").cast(pa.int64()).to_pylist() == [NOW, NOW + 1, NOW + 2]
    assert errors == {1: DUPLICATE_REASON}  # ns+999 truncates onto ns+1's microsecond: the first one wins


def test_binary_ids_must_be_utf8() -> None:
    table = pa.table({"ts": pa.array([NOW] * 3, pa.timestamp("us", tz="UTC")),
                      "device": pa.array([b"pump-\xc3\xa9", b"bad\xff\xfe", b"\xc3"], pa.binary()),
                      "sensor": pa.array([b"s"] * 3, pa.large_binary()), "value": [1.0, 2.0, 3.0]})
    good, errors = admitted(arrow_body(table), "arrow")
    assert good.column("device").to_pylist() == ["pump-é"]
    assert errors == {1: "device id is not valid UTF-8", 2: "device id is not valid UTF-8"}


def test_json_nested_deeper_than_any_encoder_is_a_row_error() -> None:
    deep = b"[" * 500 + b"]" * 500
    lines = [b'{"ts": "2026-01-01T00:00:00Z", "device": "d", "sensor": "s", "value": ' + deep + b"}", deep,
             b'{"ts": "2026-01-01T00:00:01Z", "device": {"id": 1}, "sensor": "s", "value": 1}',
             b'{"ts": "2026-01-01T00:00:02Z", "device": "d", "sensor": "s", "value": 2}']
    for kind, data in (("json", b"[" + b",".join(lines) + b"]"), ("ndjson", b"\n".join(lines))):
        good, errors = admitted(data, kind)
        assert good.column("value").to_pylist() == [2.0]
        assert errors == {0: "value is a JSON array, not a single value", 1: "reading is not a JSON object",
                          2: "device is a JSON object, not a single value"}


def compressed(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_arrow_stream_that_inflates_past_the_limit_is_refused_before_inflating() -> None:
    from fleetscore.config.server import DEFAULT_MAX_DECOMPRESSED_BYTES

    bomb = compressed(pa.table({"ts": [NOW], "device": ["x" * (40 << 20)], "sensor": ["s"], "value": [1.0]}))
    assert len(bomb) < 20_000
    before = pa.total_allocated_bytes()
    with pytest.raises(BodyTooLarge, match="decompresses to more than 8,388,608 bytes") as err:
        parse_body(bomb, "arrow", 10, max_decompressed_bytes=8 << 20)
    assert err.value.status == 413 and pa.total_allocated_bytes() - before < 1 << 20
    assert DEFAULT_MAX_DECOMPRESSED_BYTES > 40 << 20
    assert parse_body(bomb, "arrow", 10).table.num_rows == 1  # under the default limit it is an ordinary batch
    small = compressed(readings(NOW - HOUR, 50))
    good, errors = admitted(small, "arrow")
    assert errors == {} and good.num_rows == 50


@pytest.mark.parametrize("bad", ["\u0085", "\u009b", "\u202e", "\u2066", "\u200b", "\u200d", "\ufeff", "\u2028",
                                 "\u2029", "\u00ad", "\u3164"])
def test_ids_with_invisible_or_direction_changing_characters_are_refused(bad: str) -> None:
    body = (b'[{"ts": "2026-01-01T00:00:00Z", "device": "pump\\u00a0\xc3\xa9 \xf0\x9f\x99\x82", "sensor": "s", "value": 1},'
            b' {"ts": "2026-01-01T00:00:00Z", "device": "d", "sensor": "' + f"t{bad}x".encode() + b'", "value": 1}]')
    good, errors = admitted(body, "json")
    assert good.column("device").to_pylist() == ["pump\u00a0é 🙂"]  # visible non-ASCII ids stay welcome
    control = "\u0080" <= bad <= "\u009f"
    assert errors == {1: "sensor id contains control characters" if control else
                      "sensor id contains invisible or direction-changing characters "
                      "(Unicode Cf, Zl or Zp, e.g. U+200B, U+202E, U+2028, U+FEFF)"}


def test_csv_epoch_seconds_are_accepted_as_documented() -> None:
    epoch = admitted(b"ts,device,sensor,value\n1767225600,d,s,1\n1767225600.25,d,s,2\n", "csv")
    assert epoch[1] == {} and epoch[0].column("ts").cast(pa.int64()).to_pylist() == [NOW, NOW + 250_000]
    mixed = admitted(b"ts,device,sensor,value\n2026-01-01T00:00:01Z,d,s,1\n 1767225602 ,d,s,2\n1e400,d,s,3\n"
                     b"-5,d,s,4\nyesterday,d,s,5\n", "csv")
    assert mixed[0].column("ts").cast(pa.int64()).to_pylist() == [NOW + 1_000_000, NOW + 2_000_000]
    assert mixed[1] == {2: "timestamp is not finite (NaN or inf)", 3: "timestamp is outside 1970..2200",
                        4: "timestamp is not a valid ISO 8601 time"}
