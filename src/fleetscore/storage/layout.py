"""Where everything lives under the storage root. Keys are built here only, from validated parts.

    readings/date=YYYY-MM-DD/hour=HH/bucket=NNN/part-….parquet   landed readings: immutable parts per
                                                    device-hash bucket, each sorted by key
    models/<version>/manifest.parquet                   one row per (device, sensor) model
    models/<version>/shards.parquet                     one row per shard: key range it covers
    models/<version>/shard-00000.npz                    arrays of all models of one shard
    models/<version>/manifest/shard-00000.parquet       that shard's manifest rows (what its scoring task reads)
    predictions/window=<from>_<to>/run=<run>/task-00000.parquet   one file per task of a run
    predictions/window=<from>_<to>/_COMMITTED.json      which run's files are the window's predictions
    quarantine/source=<source>/date=YYYY-MM-DD/<batch>.parquet    rejected rows with reasons
    windows/width=<W>s/date=YYYY-MM-DD/hour=HH/part-<step>.parquet  closed stream windows (ingest compaction)
    logs/run=<run>/run-<stamp>.jsonl                    run log: one segment per flush (JSON lines)
    logs/run=<run>/task-00000/attempt-1.jsonl           task log of one attempt (+ .stdout.txt, .stderr.txt)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fleetscore.core.times import day_text
from fleetscore.errors import InputError

_VERSION_RE = re.compile(r"^v[0-9]{1,9}$")
_RUN_RE = re.compile(r"^[0-9a-f]{8,32}$")
#: An ingest source: ``http``, ``mqtt``, ``import``, ``late``, or a stream consumer ``kafka:<group>:<member>`` /
#: ``nats:<durable>:<member>`` (it names log folders and quarantine partitions).
SOURCE_RE = re.compile(r"^(?:[a-z0-9_-]{1,32}|(?:kafka|nats):[A-Za-z0-9._-]{1,64}:[A-Za-z0-9._-]{1,64})$")
_PART_RE = re.compile(r"^part-[0-9a-f-]{1,100}\.parquet$")


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise InputError(f"model version must look like 'v3', got {str(version)[:80]!r}")
    return version


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_RE.match(run_id):
        raise InputError(f"run id must be 8-32 hex characters, got {str(run_id)[:80]!r}")
    return run_id


def _utc(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def day_dir(hour_us: int) -> str:
    return f"readings/date={_utc(hour_us):%Y-%m-%d}"


def hour_key(hour_us: int) -> str:
    """The folder of one hour of readings (one sub-folder per device bucket)."""
    return f"{day_dir(hour_us)}/hour={_utc(hour_us):%H}"


def bucket_dir(hour_us: int, bucket: int) -> str:
    return f"{hour_key(hour_us)}/bucket={int(bucket):03d}"


def part_key(hour_us: int, bucket: int, name: str) -> str:
    """A part file of a bucket-hour; ``name`` is built by :class:`fleetscore.storage.parts.Part` (numbers only)."""
    if not _PART_RE.match(name):
        raise InputError(f"bad readings part name {name[:80]!r}")
    return f"{bucket_dir(hour_us, bucket)}/{name}"


def part_keys_key(hour_us: int, bucket: int, name: str) -> str:
    """The key counts written beside part ``name`` (rows per device and sensor, an Arrow IPC stream): what
    training plans from."""
    stem = part_key(hour_us, bucket, name).rsplit("/", 1)[1].removesuffix(".parquet")
    return f"{bucket_dir(hour_us, bucket)}/keys-{stem}.arrow"


def bucket_of_key(key: str) -> int | None:
    """The bucket of a part key built by :func:`part_key`; None for any other key."""
    m = re.fullmatch(r"readings/date=[0-9-]{10}/hour=\d{2}/bucket=(\d{3})/[^/]+", key)
    return None if m is None else int(m.group(1))


def windows_dir(width_s: int) -> str:
    return f"windows/width={int(width_s)}s"


def windows_hour_dir(width_s: int, hour_us: int) -> str:
    dt = _utc(hour_us)
    return f"{windows_dir(width_s)}/date={dt:%Y-%m-%d}/hour={dt:%H}"


def window_part_key(width_s: int, hour_us: int, part: int) -> str:
    """Closed windows of one width and hour written by compaction step ``part``."""
    return f"{windows_hour_dir(width_s, hour_us)}/part-{int(part):012d}.parquet"


def window_key(from_us: int, to_us: int) -> str:
    return f"{_utc(from_us):%Y%m%dT%H%M%SZ}_{_utc(to_us):%Y%m%dT%H%M%SZ}"


def window_bounds(name: str) -> tuple[int, int] | None:
    """A window folder name ``window=20260101T000000Z_20260101T010000Z`` → (from_us, to_us); None if not one."""
    try:
        a, b = name.removeprefix("window=").split("_")
        return _parse_stamp(a), _parse_stamp(b)
    except ValueError:
        return None


def _parse_stamp(text: str) -> int:
    return int(datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp() * 1_000_000)


def hour_of_key(key: str) -> int | None:
    """The hour (µs) of a readings hour folder built by :func:`hour_key`; None for any other key."""
    m = re.fullmatch(r"readings/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})", key)
    if m is None:
        return None
    return _parse_stamp(m.group(1).replace("-", "") + f"T{m.group(2)}0000Z")


def model_dir(version: str) -> str:
    return f"models/{check_version(version)}"


def manifest_key(version: str) -> str:
    return f"{model_dir(version)}/manifest.parquet"


def shard_manifest_key(version: str, shard: int) -> str:
    return f"{model_dir(version)}/manifest/shard-{int(shard):05d}.parquet"


def shards_key(version: str) -> str:
    return f"{model_dir(version)}/shards.parquet"


def shard_key(version: str, shard: int) -> str:
    return f"{model_dir(version)}/shard-{int(shard):05d}.npz"


def predictions_dir(from_us: int, to_us: int) -> str:
    return f"predictions/window={window_key(from_us, to_us)}"


def run_predictions_dir(from_us: int, to_us: int, run_id: str) -> str:
    return f"{predictions_dir(from_us, to_us)}/run={check_run_id(run_id)}"


def task_predictions_key(from_us: int, to_us: int, run_id: str, task: int) -> str:
    return f"{run_predictions_dir(from_us, to_us, run_id)}/task-{int(task):05d}.parquet"


def commit_key(from_us: int, to_us: int) -> str:
    return f"{predictions_dir(from_us, to_us)}/_COMMITTED.json"


def quarantine_key(source: str, day_us: int, batch: str) -> str:
    """The quarantine file of one batch of ``source``, in the folder of the UTC day ``day_us`` falls on."""
    if not SOURCE_RE.match(source) or not _RUN_RE.match(batch):
        raise InputError(f"bad quarantine source/batch {source!r}/{batch!r}")
    return f"quarantine/source={source}/date={day_text(day_us)}/{batch}.parquet"


def logs_dir(run_id: str) -> str:
    return f"logs/run={check_run_id(run_id)}"


def run_log_key(run_id: str, stamp: str) -> str:
    """One segment of a run's log; ``stamp`` (time + random suffix) orders segments by name."""
    if not re.fullmatch(r"[0-9TZ.-]{8,40}[0-9a-f]{0,16}", stamp):
        raise InputError(f"bad log segment stamp {stamp[:60]!r}")
    return f"{logs_dir(run_id)}/run-{stamp}.jsonl"


def task_log_key(run_id: str, task: int, attempt: int, stream: str = "jsonl") -> str:
    """A task attempt's structured log (``jsonl``) or its captured ``stdout`` / ``stderr``."""
    if stream not in ("jsonl", "stdout", "stderr"):
        raise InputError(f"bad task log stream {stream!r}")
    suffix = "jsonl" if stream == "jsonl" else f"{stream}.txt"
    return f"{logs_dir(run_id)}/task-{int(task):05d}/attempt-{int(attempt)}.{suffix}"
