"""``models adjust``: a new version in which one model's threshold is recalibrated to a given alarm rate.

What an operator does about a model whose alarms are repeatedly marked false (`fleetscore.core.health`):
the model is rescored on its own training readings (the base version's training window) and its
threshold moved so that those readings alarm at ``alarm_rate`` (`fleetscore.core.calibrate.decision_offset`,
the calibration training uses); a ``device`` model's decision is already its calibrated tail
probability in decades, so its threshold is read off directly. The threshold only moves the way the
new rate asks (a lower rate never lowers it). The base version stays as it is: the new one shares
every other shard byte for byte and rewrites only the model's (`fleetscore.services.retrain.commit_derived`),
records the rate in its parameters (``adjusted``) and the model's manifest reason, and is released
only when asked.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.catalog import VersionRecord
from fleetscore.core.calibrate import check_alarm_rate, decision_offset
from fleetscore.core.features import build_features, day_phase, parse_features
from fleetscore.core.health import expected_rate
from fleetscore.core.kinds import Params, get_kind
from fleetscore.errors import InputError, NotFoundError
from fleetscore.services.context import Context
from fleetscore.services.retrain import commit_derived, copy_shards
from fleetscore.storage.models import ModelStore
from fleetscore.storage.readings import ReadingStore

#: Start of the manifest reason of a model whose threshold `adjust_threshold` recalibrated.
ADJUSTED = "adjusted: alarm rate"


@dataclass(frozen=True)
class AdjustResult:
    """The new version and what changed: the model (a device model: all its sensors), its old and new rate."""

    version: str
    base_version: str
    device: str
    sensors: list[str]
    kind: str
    alarm_rate: float
    previous_rate: float | None
    training_rows: int | None  # rows the threshold was recalibrated on (None: a device model, read off its tail)
    training_alarms_before: int | None
    training_alarms_after: int | None
    released: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def adjust_threshold(ctx: Context, base: VersionRecord, device: str, sensor: str, alarm_rate: float, *,
                     release: bool = False) -> AdjustResult:
    """A new version = ``base`` with the (device, sensor) model's threshold recalibrated to ``alarm_rate``."""
    started = time.perf_counter()
    rate = check_alarm_rate(alarm_rate)
    if base.status != "ready":
        raise InputError(f"model version {base.version} is {base.status}; only a ready version can be adjusted")
    store = ModelStore(ctx.storage)
    info, manifest = store.read_manifest(base.version)
    row = _model_row(manifest, device, sensor, base.version)
    shard, slot, kind = int(row["shard"]), int(row["slot"]), str(row["kind"])
    rows = store.read_shard_manifest(base.version, shard)
    mine = pc.and_(pc.equal(rows.column("device"), device), pc.equal(rows.column("kind"), kind))
    mine = pc.and_(mine, pc.equal(rows.column("slot"), slot))
    if not get_kind(kind).per_device:
        mine = pc.and_(mine, pc.equal(rows.column("sensor"), sensor))
    sensors = sorted(rows.filter(mine).column("sensor").to_pylist())
    bundle = store.read_bundle(base.version, shard)
    params, previous = bundle[kind], _current_rate(bundle[kind], kind, slot, base.params, device, sensor)
    x, phase = (None, None) if get_kind(kind).per_device else _training_rows(ctx, base, info.features, device, sensor)
    bundle[kind], counts = _recalibrated(params, kind, slot, rate, previous, x, phase)
    adjusted = [a for a in info.params.get("adjusted", []) if (a["device"], a["sensor"]) not in {(device, s) for s in sensors}]
    new_params = info.params | {"base_version": base.version,
                                "adjusted": adjusted + [{"device": device, "sensor": s, "alarm_rate": rate} for s in sensors]}
    version = ctx.catalog.new_version(info.kind, info.features, new_params, base.train_from, base.train_to)
    try:
        shards = store.read_shards(base.version)
        copy_shards(ctx, base.version, version, [int(s) for s in shards.column("shard").to_pylist() if s != shard])
        store.write_bundle(version, shard, bundle)
        reason = pc.if_else(mine, pa.scalar(f"{ADJUSTED} {rate:g}"), rows.column("reason"))
        rows = rows.set_column(rows.schema.get_field_index("reason"), "reason", reason)
        derived = commit_derived(ctx, info, version, new_params, manifest, shards, {shard: rows}, started, release)
    except BaseException:
        ctx.catalog.finish_version(version, "failed", 0, 0, 0, time.perf_counter() - started)
        raise
    return AdjustResult(version, base.version, device, sensors, kind, rate, previous, *counts, derived.released)


def _model_row(manifest: pa.Table, device: str, sensor: str, version: str) -> dict[str, Any]:
    """The manifest row of (device, sensor); NotFoundError naming what is unknown, InputError if it has no model."""
    of_device = manifest.filter(pc.equal(manifest.column("device"), device))
    if of_device.num_rows == 0:
        raise NotFoundError(f"no model of device {device[:80]!r} in {version}")
    found = of_device.filter(pc.equal(of_device.column("sensor"), sensor))
    if found.num_rows == 0:
        raise NotFoundError(f"device {device[:80]!r} has no model for sensor {sensor[:80]!r} in {version}; its sensors: "
                            + ", ".join(sorted(of_device.column("sensor").to_pylist())[:20]))
    row: dict[str, Any] = found.to_pylist()[0]
    if row["status"] != "ok" or row["slot"] is None or row["slot"] < 0 or row["kind"] is None:
        raise InputError(f"the model of {device[:80]!r} {sensor[:80]!r} in {version} failed to train "
                         f"({row['reason']}); there is no threshold to adjust")
    return row


def _current_rate(params: Params, kind: str, slot: int, version_params: dict[str, Any], device: str,
                  sensor: str) -> float | None:
    """The alarm rate the model is calibrated to now: its own where the kind keeps it, else the version's."""
    if kind == "device":
        return float(10.0 ** -params.intercept[slot])
    if kind == "robust":
        return float(params.rate[slot])
    for a in version_params.get("adjusted", []):
        if (a["device"], a["sensor"]) == (device, sensor):
            return float(a["alarm_rate"])
    return expected_rate(version_params)


def _training_rows(ctx: Context, base: VersionRecord, features: str, device: str,
                   sensor: str) -> tuple[np.ndarray, np.ndarray]:
    """The model's feature rows on the base version's training window, and their times of day."""
    if base.train_from is None or base.train_to is None:
        raise InputError(f"model version {base.version} was not trained here (imported); it has no training window "
                         "to recalibrate on")
    readings = ReadingStore(ctx.storage).read_window(base.train_from, base.train_to, devices=(device, device))
    readings = readings.filter(pc.equal(readings.column("sensor"), sensor)).sort_by("ts")
    meta, x = build_features(readings, parse_features(features))
    return x, day_phase(meta.column("ts"))


def _recalibrated(params: Params, kind: str, slot: int, rate: float, previous: float | None, x: np.ndarray | None,
                  phase: np.ndarray | None) -> tuple[Params, tuple[int | None, int | None, int | None]]:
    """``params`` with model ``slot``'s threshold at ``rate`` (moved only the way it asks), and (training rows,
    alarms on them before, after); InputError when there is nothing to calibrate on."""
    spec = get_kind(kind)
    offsets = np.zeros(params.n_models)
    if x is None:  # a device model: decision = intercept - decades of rarity under its calibrated tail
        offsets[slot] = params.intercept[slot] - (-math.log10(rate))
        counts: tuple[int | None, int | None, int | None] = (None, None, None)
    else:
        idx = np.full(len(x), slot, dtype=np.int64)
        decisions = spec.decision_function(params, idx, x, phase, None)
        finite = decisions[np.isfinite(decisions)]
        if finite.size == 0:
            raise InputError("the model has no training readings left to recalibrate on (were they deleted by gc?)")
        offsets[slot] = decision_offset(finite, rate)
        counts = (int(finite.size), int(np.sum(finite < 0)), 0)
    if previous is not None:  # a lower rate never lowers the threshold, a higher one never raises it
        offsets[slot] = min(offsets[slot], 0.0) if rate < previous else max(offsets[slot], 0.0)
    out = spec.shift(params, offsets)
    if kind == "robust":  # the severity scale's rate at the threshold
        out = replace(out, rate=np.where(np.arange(out.n_models) == slot, rate, out.rate))
    if x is not None:
        after = spec.decision_function(out, np.full(len(x), slot, dtype=np.int64), x, phase, None)
        counts = (counts[0], counts[1], int(np.sum(after[np.isfinite(after)] < 0)))
    return out, counts
