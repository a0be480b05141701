"""Incident building: after a window commits, its flags become fragments and the incidents they belong to are rebuilt.

The committed window's flagged rows (``ts, device, sensor, severity``) come from the scoring tasks'
outcomes (`fleetscore.core.incidents.flags_of`); only files of tasks that ran in an earlier execution
of the run (a resumed run) are read back. The sampling intervals of their devices come from the
version's manifest. In one catalog transaction the window's old fragments are replaced by the new
ones and the incidents of every touched device are rebuilt from all their fragments near the window
(`fleetscore.core.incidents.reconcile`), so re-scoring a window changes its part exactly once;
active incidents of other devices are resolved once their quiet period has passed. The alert rules
then see what changed. All of it runs on columns; incidents become values only where an existing one
changes (or for the alert rules).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from fleetscore.catalog.incidents import IncidentStore, WindowUpdate, incident_values
from fleetscore.core.incidents import (
    FLAGS,
    Fragment,
    Incident,
    Rules,
    as_ints,
    device_interval_s,
    flags_of,
    group_flags,
    learned_intervals,
    lookup,
    merge_fragments,
    new_incidents,
    reconcile,
    refresh_status,
    settled,
)
from fleetscore.core.incidents import fragments as fragments_of
from fleetscore.errors import FleetscoreError
from fleetscore.services import alerts
from fleetscore.services.context import Context
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage

#: The prediction columns incident building reads of a file whose flags no task handed back.
FLAG_COLUMNS = ["ts", "device", "sensor", "severity", "is_anomaly"]


def after_commit(ctx: Context, from_us: int, to_us: int, run_id: str,
                 flags: Mapping[str, pa.Table] | None = None) -> int:
    """Rebuild the incidents the committed window [from, to) of ``run_id`` touches; returns how many were created
    or changed (newly resolved and superseded ones too), handed to the alert rules as values when there are rules.
    Nothing when the window's predictions are another run's by now. ``flags``: the :data:`FLAGS` tables the tasks
    handed back, by predictions file; the committed files not among them are read."""
    try:
        pointer = json.loads(ctx.storage.read_bytes(layout.commit_key(from_us, to_us)))
    except FileNotFoundError:
        return 0
    if pointer.get("run_id") != run_id:
        return 0
    flagged = _flagged(ctx.storage, pointer["files"], flags or {})
    settings, now = ctx.config.incidents, ctx.clock()
    with IncidentStore(ctx.catalog).window_update() as tx:
        touched = tx.take_fragments(from_us, to_us) | set(flagged.column("device").unique().to_pylist())
        intervals = _intervals(ctx.storage, pointer, touched)
        horizon = tx.built(from_us, to_us, run_id, now)
        by_interval = {v: Rules.counted(v, settings.merge_gap, settings.quiet_period, horizon)
                       for v in set(intervals.values())}  # most devices share a sampling interval: one value each
        rules = {d: by_interval[intervals[d]] for d in touched}
        severity = pc.fill_null(flagged.column("severity"), np.nan).to_numpy(zero_copy_only=False)
        fragments = group_flags(as_ints(flagged.column("ts")), flagged.column("device"), flagged.column("sensor"),
                                severity, {d: r.gap_us for d, r in rules.items()})
        changed, new = _rebuild(tx, from_us, to_us, fragments, rules, now)
        tx.put_fragments(from_us, to_us, fragments)
        done = {i.id for i in changed}
        for inc in tx.quiet(settings.quiet_period, horizon):  # quiet periods passed, on any device
            if inc.id not in done:
                quiet = Rules.counted(inc.interval_s, settings.merge_gap, settings.quiet_period, horizon)
                refreshed = refresh_status(inc, quiet, now)
                if refreshed is not None:
                    changed.append(refreshed)
        tx.save(changed)
        tx.insert(new)
        if ctx.config.alerts.rules:
            changed = tx.with_marks(changed) + incident_values(new)
    if ctx.config.alerts.rules:
        alerts.on_incidents(ctx, changed)
    return len(changed) + int(new.num_rows)


def preload() -> threading.Thread:
    """Load in a background thread what building incidents pays for first: pyarrow imports pandas on its first
    array (about half a second). A run starts it while its tasks score, so its end does not wait for that import."""
    thread = threading.Thread(target=pa.array, args=([0],), name="incidents-preload", daemon=True)
    thread.start()
    return thread


def build_summary(ctx: Context, from_us: int, to_us: int, run_id: str,
                  flags: Mapping[str, pa.Table] | None = None) -> dict[str, Any]:
    """:func:`after_commit` for the scoring run's record: ``{"changed": N, "elapsed_s": s}``, or ``{"error": ...}``
    when it failed (the window is committed either way; the next commit or a re-score builds its incidents)."""
    started = time.perf_counter()
    try:
        changed = after_commit(ctx, from_us, to_us, run_id, flags)
    except (FleetscoreError, OSError, sa.exc.SQLAlchemyError, pa.ArrowException, KeyError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"changed": changed, "elapsed_s": round(time.perf_counter() - started, 4)}


def _rebuild(tx: WindowUpdate, from_us: int, to_us: int, fragments: pa.Table, rules: dict[str, Rules],
             now_us: int) -> tuple[list[Incident], pa.Table]:
    """The touched devices' incidents rebuilt from their fragments near the window (the new ones, and of other
    windows those within reach of the window or of the incidents that meet it): those that change, as values, and
    those of devices without an incident nearby, as columns. Values are made only where incidents change."""
    if not rules:
        return [], pa.table({})
    devices = sorted(rules)
    gap = np.array([rules[d].gap_us for d in devices], dtype=np.int64)
    reach = int(gap.max())
    near = tx.incidents(devices, from_us - reach, to_us + reach)
    code = lookup(near.column("device"), devices)
    start, last = as_ints(near.column("start_us")), as_ints(near.column("last_us"))
    mine = (last >= from_us - gap[code]) & (start <= to_us + gap[code])
    near, code_near, start, last = near.filter(pa.array(mine)), code[mine], start[mine], last[mine]
    lo, hi = np.full(len(devices), from_us, dtype=np.int64), np.full(len(devices), to_us, dtype=np.int64)
    np.minimum.at(lo, code_near, start)
    np.maximum.at(hi, code_near, last)
    lo, hi = lo - gap, hi + gap
    stored = tx.fragments(devices, int(lo.min()), int(hi.max()))
    code = lookup(stored.column("device"), devices)
    keep = (as_ints(stored.column("last_us")) >= lo[code]) & (as_ints(stored.column("start_us")) <= hi[code])
    if keep.any():
        groups = merge_fragments(pa.concat_tables([stored.filter(pa.array(keep)), fragments]),
                                 {d: r.gap_us for d, r in rules.items()})
    else:  # nothing of other windows nearby: the window's fragments are the groups (merging them again changes nothing)
        groups = fragments
    g_code = lookup(groups.column("device"), devices)
    nearby = np.zeros(len(devices), dtype=bool)
    nearby[code_near] = True
    new = new_incidents(groups.filter(pa.array(~nearby[g_code])), rules, _new_ids, now_us)
    if not near.num_rows:
        return [], new
    groups, g_code = groups.filter(pa.array(nearby[g_code])), g_code[nearby[g_code]]
    index = {d: k for k, d in enumerate(devices)}
    todo = nearby.copy()  # devices whose incidents change: reconciled on values
    todo[np.array([index[d] for d in settled(groups, near, rules)], dtype=np.int64)] = False
    parts: dict[str, list[Fragment]] = {}
    for f in fragments_of(groups.filter(pa.array(todo[g_code]))):
        parts.setdefault(f.device, []).append(f)
    old: dict[str, list[Incident]] = {}
    for inc in incident_values(near.filter(pa.array(todo[code_near]))):
        old.setdefault(inc.device, []).append(inc)
    changed: list[Incident] = []
    for device in sorted(old):
        changed += reconcile(parts.get(device, []), old[device], rules[device], now_us, _new_id)
    return changed, new


def _new_ids(n: int) -> list[str]:
    """``n`` new incident ids (16 hex digits): a random 64-bit start and the ``n - 1`` after it, in order.

    A window's new incidents are made in device order, so with ids in that order too they enter the catalog's
    id and device indexes as appends, not at random places: about half the insert time at 80k a window. Ids
    stay as unlikely to meet an existing one as 64 random bits each."""
    start = int.from_bytes(os.urandom(8), "big") % (2**64 - n)
    return [f"{start + k:016x}" for k in range(n)]


def _new_id() -> str:
    return _new_ids(1)[0]


def _flagged(storage: Storage, files: list[str], known: Mapping[str, pa.Table]) -> pa.Table:
    """The flagged rows of the window's prediction files (:data:`FLAGS`): those ``known`` as they are, the others read
    (ts, device and sensor dictionary-encoded: no string per row)."""
    parts = []
    for key in files:
        if key in known:
            parts.append(known[key])
            continue
        with storage.open_parquet(key, read_dictionary=["device", "sensor"]) as pf:
            names = set(pf.schema_arrow.names)
            parts.append(flags_of(pf.read(columns=[c for c in FLAG_COLUMNS if c in names])))
    return pa.concat_tables(parts) if parts else FLAGS.empty_table()


def _intervals(storage: Storage, pointer: dict[str, Any], devices: Iterable[str]) -> dict[str, float]:
    """Each device's sampling interval (s): the median of its models' learned ``interval_s`` in the window's version;
    where unknown, the median gap of its predictions' times in the window (`device_interval_s`)."""
    devices = sorted(set(devices))
    if not devices:
        return {}
    key = layout.manifest_key(pointer["version"])
    with storage.open_parquet(key) as pf:  # the whole manifest's two columns: one read, no filter per device
        manifest = pf.read(columns=["device", "interval_s"]) if "interval_s" in pf.schema_arrow.names else None
    out = {} if manifest is None else learned_intervals(manifest.column("device"), manifest.column("interval_s"), devices)
    unknown = [d for d in devices if d not in out]  # no learned interval (models before format 4)
    if unknown:
        times: dict[str, list[int]] = {}
        for key in pointer["files"]:
            part = storage.read_parquet(key, columns=["ts", "device"], filters=[("device", "in", unknown)])
            ts = pc.cast(part.column("ts"), pa.int64()).to_pylist()
            for d, t in zip(part.column("device").to_pylist(), ts):
                times.setdefault(d, []).append(t)
        out |= {d: device_interval_s([], times.get(d, [])) for d in unknown}
    return out
