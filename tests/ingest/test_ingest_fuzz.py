"""Fuzzing the running server with malformed requests: only 4xx or 202, it stays up, nothing accepted is lost.

``FLEETSCORE_FUZZ_EXAMPLES`` sets the number of requests (default 300, enough for CI; thousands
for a soak run).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_support import CLI, Server
from test_ingest_types import ipc, tables

pytestmark = pytest.mark.backend

TOKEN = "fuzz-token"
EXAMPLES = int(os.environ.get("FLEETSCORE_FUZZ_EXAMPLES", "300"))
TYPES = ["application/json", "application/x-ndjson", "text/csv", "application/vnd.apache.arrow.stream"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=30),
    st.sampled_from(["NaN", "inf", "-inf", "", " ", "../../x", "<script>", "2026-01-01T00:00:00Z",
                     "2026-13-45T99:00:00Z", "1e400", "\x00", "x" * 300, "🙂"]),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)
reading = st.fixed_dictionaries({}, optional={"ts": scalars, "device": scalars, "sensor": scalars, "value": scalars})


def arrow_bodies() -> st.SearchStrategy[bytes]:
    def build(rows: list[dict[str, Any]], cut: int) -> bytes:
        import pyarrow as pa

        try:
            table = pa.Table.from_pylist(rows) if rows else pa.table({"ts": pa.array([], pa.int64())})
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            table = pa.table({"ts": [json.dumps(r, default=str) for r in rows]})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue().to_pybytes()
        return data[:cut] if cut else data

    return st.builds(build, st.lists(reading, max_size=6), st.integers(0, 400))


bodies = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda v: json.dumps(v, default=str).encode(), json_values),
    st.builds(lambda rows: json.dumps(rows, default=str).encode(), st.lists(reading, max_size=8)),
    st.builds(lambda rows: b"\n".join(json.dumps(r, default=str).encode() for r in rows), st.lists(json_values, max_size=6)),
    st.builds(lambda rows: ("ts,device,sensor,value\n" + "\n".join(rows)).encode("utf-8", "surrogatepass"),
              st.lists(st.text(max_size=40), max_size=6)),
    arrow_bodies(),
    st.builds(ipc, tables(), st.sampled_from([None, "zstd", "lz4"])),  # every Arrow type in every column
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    home.mkdir()
    (home / "fleetscore.toml").write_text("[ingest]\nmax_body_bytes = 20000\nmax_batch_rows = 50\n")
    srv = Server(home, "--compact-interval", "0", env={"FLEETSCORE_TOKEN": TOKEN})
    srv.home = home  # type: ignore[attr-defined]
    srv.accepted = 0  # type: ignore[attr-defined]
    srv.client = httpx.Client(base_url=srv.url, timeout=30)  # type: ignore[attr-defined]
    # wrong tokens come from another loopback address: its lockout (429) must not touch the good client
    srv.intruder = httpx.Client(base_url=srv.url, timeout=30,  # type: ignore[attr-defined]
                                transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    yield srv
    srv.client.close()  # type: ignore[attr-defined]
    srv.intruder.close()  # type: ignore[attr-defined]
    srv.stop()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=bodies, content_type=st.one_of(st.sampled_from(TYPES), st.text(max_size=30)),
       key=st.one_of(st.none(), st.text(max_size=20)), good_token=st.booleans() | st.just(True))
def test_malformed_requests_get_4xx_and_the_server_stays_up(server: Server, body: bytes, content_type: str,
                                                            key: str | None, good_token: bool) -> None:
    headers = {"Authorization": f"Bearer {TOKEN if good_token else 'nope'}"}
    try:
        headers["Content-Type"] = content_type.encode("latin-1").decode("ascii")
        if key is not None:
            headers["Idempotency-Key"] = key.encode("latin-1").decode("ascii")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass  # a header httpx cannot send as it is: send the request without it
    try:
        client = server.client if good_token else server.intruder  # type: ignore[attr-defined]
        r = client.post("/v1/readings", content=body, headers=headers)
    except httpx.LocalProtocolError:
        return  # httpx itself refuses to send such a header
    if r.status_code == 400 and not r.headers.get("content-type", "").startswith("application/json"):
        return  # the HTTP parser rejected the request line or a header before any route ran
    if not good_token:
        assert r.status_code in (401, 429)  # 429: too many wrong tokens from this address in a row
        return
    # 422: an Idempotency-Key an earlier example sent with another body (refused, as a reused key must be)
    reused = r.status_code == 422 and "Idempotency-Key" in headers and "already used" in r.text
    assert r.status_code in (202, 400, 413, 415) or reused, (r.status_code, r.text)
    answer = r.json()
    if r.status_code == 202:
        assert answer["accepted"] + answer["rejected"] >= len(answer["errors"])
        if r.headers.get("Idempotent-Replayed") != "true":
            server.accepted += answer["accepted"]  # type: ignore[attr-defined]
    else:
        assert isinstance(answer["detail"], str) and answer["detail"]


def test_after_fuzzing_everything_accepted_is_accounted_for(server: Server) -> None:
    assert server.client.get("/healthz").status_code == 200  # type: ignore[attr-defined]
    out = subprocess.run([*CLI, "compact", "--home", str(server.home), "--json"],  # type: ignore[attr-defined]
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    checkpoint = json.loads((server.home / "ingest" / "checkpoint.json").read_text())  # type: ignore[attr-defined]
    totals = checkpoint["totals"] if checkpoint["seq"] else {}
    stored = totals.get("landed", 0) + totals.get("duplicates", 0) + totals.get("late", 0)
    assert stored == server.accepted  # type: ignore[attr-defined]
