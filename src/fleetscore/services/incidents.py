"""Incident building: after a window commits, its flags become fragments and the incidents they belong to are rebuilt.

Only the committed window's flagged rows are read (``ts, device, sensor, severity``), with the
sampling intervals of their devices from the version's manifest. In one catalog transaction the
window's old fragments are replaced by the new ones and the incidents of every touched device are
rebuilt from all their fragments near the window (`fleetscore.core.incidents.reconcile`), so
re-scoring a window changes its part exactly once; active incidents of other devices are resolved
once their quiet period has passed. The alert rules then see what changed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from fleetscore.catalog.incidents import IncidentStore, WindowUpdate
from fleetscore.core.incidents import (
    Fragment,
    Incident,
    Rules,
    device_interval_s,
    group_flags,
    merge_fragments,
    reconcile,
    refresh_status,
)
from fleetscore.errors import FleetscoreError
from fleetscore.services import alerts
from fleetscore.services.context import Context
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage

#: The prediction columns incident building reads.
FLAG_COLUMNS = ["ts", "device", "sensor", "severity", "is_anomaly"]


def after_commit(ctx: Context, from_us: int, to_us: int, run_id: str) -> list[Incident]:
    """Rebuild the incidents the committed window [from, to) of ``run_id`` touches; returns those created or changed
    (newly resolved and superseded ones too) and hands them to the alert rules. Nothing when the window's
    predictions are another run's by now."""
    try:
        pointer = json.loads(ctx.storage.read_bytes(layout.commit_key(from_us, to_us)))
    except FileNotFoundError:
        return []
    if pointer.get("run_id") != run_id:
        return []
    flagged = _flagged(ctx.storage, pointer["files"])
    settings, now = ctx.config.incidents, ctx.clock()
    with IncidentStore(ctx.catalog).window_update() as tx:
        touched = tx.take_fragments(from_us, to_us) | set(pc.unique(flagged.column("device")).to_pylist())
        intervals = _intervals(ctx.storage, pointer, touched)
        horizon = tx.built(from_us, to_us, run_id, now)
        rules = {d: Rules.counted(intervals[d], settings.merge_gap, settings.quiet_period, horizon) for d in touched}
        ts = pc.cast(flagged.column("ts"), pa.int64()).to_numpy(zero_copy_only=False)
        severity = pc.fill_null(flagged.column("severity"), np.nan).to_numpy(zero_copy_only=False)
        fragments = group_flags(ts, flagged.column("device"), flagged.column("sensor"), severity,
                                {d: r.gap_us for d, r in rules.items()})
        changed = _rebuild(tx, from_us, to_us, fragments, rules, now)
        tx.put_fragments(from_us, to_us, fragments)
        done = {i.id for i in changed}
        for inc in tx.quiet(settings.quiet_period, horizon):  # quiet periods passed, on any device
            if inc.id not in done:
                quiet = Rules.counted(inc.interval_s, settings.merge_gap, settings.quiet_period, horizon)
                refreshed = refresh_status(inc, quiet, now)
                if refreshed is not None:
                    changed.append(refreshed)
        tx.save(changed)
        changed = tx.with_marks(changed)
    alerts.on_incidents(ctx, changed)
    return changed


def build_summary(ctx: Context, from_us: int, to_us: int, run_id: str) -> dict[str, Any]:
    """:func:`after_commit` for the scoring run's record: ``{"changed": N, "elapsed_s": s}``, or ``{"error": ...}``
    when it failed (the window is committed either way; the next commit or a re-score builds its incidents)."""
    started = time.perf_counter()
    try:
        changed = len(after_commit(ctx, from_us, to_us, run_id))
    except (FleetscoreError, OSError, sa.exc.SQLAlchemyError, pa.ArrowException, KeyError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"changed": changed, "elapsed_s": round(time.perf_counter() - started, 4)}


def _rebuild(tx: WindowUpdate, from_us: int, to_us: int, fragments: list[Fragment], rules: dict[str, Rules],
             now_us: int) -> list[Incident]:
    """The touched devices' incidents rebuilt from their fragments near the window (the new ones, and of other
    windows those within reach of the window or of the incidents that meet it)."""
    if not rules:
        return []
    reach = max(r.gap_us for r in rules.values())
    near = tx.incidents(rules, from_us - reach, to_us + reach)
    spans: dict[str, tuple[int, int]] = {}
    for device, r in rules.items():
        mine = [i for i in near.get(device, ()) if i.last_us >= from_us - r.gap_us and i.start_us <= to_us + r.gap_us]
        near[device] = mine
        spans[device] = (min([from_us, *(i.start_us for i in mine)]), max([to_us, *(i.last_us for i in mine)]))
    lo, hi = min(s[0] for s in spans.values()) - reach, max(s[1] for s in spans.values()) + reach
    stored = tx.fragments(rules, lo, hi)
    new: dict[str, list[Fragment]] = {}
    for f in fragments:
        new.setdefault(f.device, []).append(f)
    changed: list[Incident] = []
    for device in sorted(rules):
        r, (a, b) = rules[device], spans[device]
        parts = [f for f in stored.get(device, ()) if f.last_us >= a - r.gap_us and f.start_us <= b + r.gap_us]
        groups = merge_fragments(parts + new.get(device, []), r.gap_us)
        changed += reconcile(groups, near[device], r, now_us, _new_id)
    return changed


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


def _flagged(storage: Storage, files: list[str]) -> pa.Table:
    """The flagged rows of the window's prediction files: ts, device, sensor, severity (null without a calibrated tail)."""
    parts = []
    for key in files:
        with storage.open_parquet(key, read_dictionary=["device", "sensor"]) as pf:  # ids decoded for flagged rows only
            names = set(pf.schema_arrow.names)
            table = pf.read(columns=[c for c in FLAG_COLUMNS if c in names])
        table = table.filter(pc.fill_null(table.column("is_anomaly"), False))
        if "severity" not in names:  # written before severity existed
            table = table.append_column("severity", pa.nulls(table.num_rows, pa.float64()))
        parts.append(pa.table({"ts": pc.cast(table.column("ts"), pa.int64()),
                               "device": pc.cast(table.column("device"), pa.string()),
                               "sensor": pc.cast(table.column("sensor"), pa.string()),
                               "severity": pc.cast(table.column("severity"), pa.float64())}))
    if not parts:
        return pa.table({"ts": pa.array([], pa.int64()), "device": pa.array([], pa.string()),
                         "sensor": pa.array([], pa.string()), "severity": pa.array([], pa.float64())})
    return pa.concat_tables(parts)


def _intervals(storage: Storage, pointer: dict[str, Any], devices: Iterable[str]) -> dict[str, float]:
    """Each device's sampling interval (s): the median of its models' learned ``interval_s`` in the window's version;
    where unknown, the median gap of its predictions' times in the window (`device_interval_s`)."""
    devices = sorted(set(devices))
    if not devices:
        return {}
    key = layout.manifest_key(pointer["version"])
    with storage.open_parquet(key) as pf:
        has_intervals = "interval_s" in pf.schema_arrow.names  # not before model format 4
    learned: dict[str, list[float | None]] = {}
    if has_intervals:
        manifest = storage.read_parquet(key, columns=["device", "interval_s"], filters=[("device", "in", devices)])
        for d, v in zip(manifest.column("device").to_pylist(), manifest.column("interval_s").to_pylist()):
            learned.setdefault(d, []).append(v)
    out = {d: device_interval_s(learned.get(d, [])) for d in devices}
    unknown = [d for d in devices if not any(v is not None and v > 0 for v in learned.get(d, []))]
    if unknown:
        times: dict[str, list[int]] = {}
        for key in pointer["files"]:
            part = storage.read_parquet(key, columns=["ts", "device"], filters=[("device", "in", unknown)])
            ts = pc.cast(part.column("ts"), pa.int64()).to_pylist()
            for d, t in zip(part.column("device").to_pylist(), ts):
                times.setdefault(d, []).append(t)
        out |= {d: device_interval_s([], times.get(d, [])) for d in unknown}
    return out
