"""`Storage.read_parquet` evaluates plain filters itself on local files: the same rows as pyarrow.dataset's."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fleetscore.storage.fs import Storage

FILTERS = [
    [("device", "=", "d1")],
    [("device", "in", ["d1", "d3", "nope"])],
    [("shard", "!=", 1), ("score", "<", 0.5)],
    [("score", ">=", 0.25), ("score", "<=", 0.75)],
    [("ts", ">", datetime(2026, 1, 1, 0, 2, tzinfo=UTC))],
    [("kind", "==", "ocsvm")],
    [("device", "=", "none")],
]


@pytest.fixture
def stored(tmp_path):
    table = pa.table({
        "ts": pa.array([datetime(2026, 1, 1, 0, i, tzinfo=UTC) for i in range(6)], pa.timestamp("us", "UTC")),
        "device": ["d1", "d2", "d3", None, "d1", "d2"],
        "shard": pa.array([0, 1, 1, 2, 0, None], pa.int32()),
        "score": [0.1, 0.3, 0.5, 0.7, None, 0.9],
        "kind": pc.dictionary_encode(pa.array(["ocsvm", "robust", "ocsvm", "ocsvm", None, "robust"])),
    })
    storage = Storage(str(tmp_path))
    storage.write_parquet("t.parquet", table)
    return storage, str(tmp_path / "t.parquet")


@pytest.mark.parametrize("filters", FILTERS)
@pytest.mark.parametrize("columns", [None, ["score", "device"]])
def test_same_rows_as_pyarrow_dataset(stored, filters, columns):
    storage, path = stored
    expected = pq.read_table(path, columns=columns, filters=filters)
    got = storage.read_parquet("t.parquet", columns=columns, filters=filters)
    assert got.column_names == expected.column_names
    assert got.to_pylist() == expected.to_pylist()


def test_plain_reads_do_not_import_pyarrow_dataset(stored):
    _, path = stored
    code = ("import sys; from fleetscore.storage.fs import Storage; import os\n"
            f"s = Storage({str(stored[0].root)!r}); t = s.read_parquet('t.parquet', filters=[('device', 'in', ['d1'])])\n"
            "print(t.num_rows, 'pyarrow._dataset' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "False"]
