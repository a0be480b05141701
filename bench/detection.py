"""Detection quality benchmark: fleetscore's defaults vs the classic fixed hyper-parameters.

    python bench/detection.py [--devices 30] [--train-hours 24] [--score-hours 6] [--workers 2]

Every scenario simulates a fleet with labelled anomalies (spike, drift, stuck, noise), imports it
into a fresh home, trains once with the defaults (no labels, nothing pinned) and once with the
classic design's settings (OneClassSVM on raw values, nu 0.0001, gamma 0.01), scores the hours
after the training window in one run, and evaluates the run against the labels. Scenarios:

* ``mixed``: the simulator as is: 8 sensor types of very different scales, mild daily cycles;
* ``daily-strong``: a daily cycle 20 noise-sigmas high added to every series;
* ``device-scales``: every device's readings multiplied by its own factor in 10^[-3, 3];
* ``short-history``: half of the devices have only their last 45 minutes of training history
  (fallback models).

Prints one Markdown table: point precision / recall / F1, event recall per anomaly kind, the
false-alarm rate on normal readings, and the incidents the run built against the labelled events
(`fleetscore.core.incidents.match_events`: incidents per detected event, goal <= 1.3; incident
precision, goal >= 0.9 with the defaults). Targets (issue #8, defaults): precision >= 0.9, event recall
>= 0.9 for spikes and stuck sensors, >= 0.7 for drift.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.api import Fleet
from fleetscore.core.evaluate import evaluate
from fleetscore.core.incidents import labelled_events, match_events
from fleetscore.core.simulate import _PROFILES, simulate_fleet

START = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = ("spike", "drift", "stuck", "noise")
SETTINGS = {
    "defaults": {},
    "classic": {"kind": "ocsvm", "nu": 0.0001, "gamma": 0.01, "features": "raw"},
}


def _sigma(table: pa.Table) -> np.ndarray:
    """Each row's sensor noise sigma from the simulator's profiles."""
    sensors = table.column("sensor").to_pylist()
    return np.array([_PROFILES.get(s, (0, 0, 1.0, 0))[2] for s in sensors])


def _series_hash(table: pa.Table) -> np.ndarray:
    key = pc.binary_join_element_wise(table.column("device"), table.column("sensor"), "/").to_pylist()
    lookup = {k: (zlib.crc32(k.encode()) % 10_000) / 10_000 for k in set(key)}
    return np.array([lookup[k] for k in key])


def scenario(name: str, devices: int, train_h: int, score_h: int, seed: int) -> pa.Table:
    table = simulate_fleet(devices, 8, START, train_h + score_h, 60.0, 0.01, seed)
    value = table.column("value").to_numpy().copy()
    ts_s = table.column("ts").cast(pa.int64()).to_numpy() / 1e6
    if name == "daily-strong":
        phase = 2 * np.pi * _series_hash(table)
        cycle = 20 * _sigma(table) * np.sin(2 * np.pi * ts_s / 86_400 + phase)
        # a stuck sensor stays stuck: hold the cycle at its value just before the segment
        stuck = pc.equal(table.column("anomaly_kind"), "stuck").to_numpy(zero_copy_only=False)
        first = stuck & ~np.r_[False, stuck[:-1]]
        anchor = np.maximum.accumulate(np.where(first, np.arange(len(value)) - 1, 0))
        value += np.where(stuck, cycle[np.maximum(anchor, 0)], cycle)
    elif name == "device-scales":
        dev = table.column("device").to_pylist()
        factor = {d: 10 ** (6 * ((zlib.crc32(d.encode()) % 1000) / 1000) - 3) for d in set(dev)}
        value *= np.array([factor[d] for d in dev])
    table = table.set_column(table.schema.get_field_index("value"), "value", pa.array(value))
    if name == "short-history":
        cut = START + timedelta(hours=train_h) - timedelta(minutes=45)
        dev_no = pc.cast(pc.utf8_slice_codeunits(table.column("device"), 4), pa.int64()).to_numpy()
        early = pc.less(table.column("ts"), pa.scalar(cut)).to_numpy(zero_copy_only=False)
        table = table.filter(pa.array(~(early & (dev_no % 2 == 0))))
    return table


def run_one(table: pa.Table, settings: dict, train_h: int, score_h: int, workers: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="fleetscore-bench-"))
    try:
        fleet = Fleet.open(home / "home", workers=workers)
        fleet.import_table(table.select(["ts", "device", "sensor", "value"]))
        t_end = START + timedelta(hours=train_h)
        started = time.perf_counter()
        trained = fleet.train(START, t_end, workers=workers, **settings)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        run = fleet.score(t_end, t_end + timedelta(hours=score_h), version=trained.version, workers=workers)
        score_s = time.perf_counter() - started
        ev = evaluate(fleet.predictions(run_id=run.run_id), table).as_dict()
        ev["alarm_rate"] = ev["false_pos"] / max(1, ev["matched"] - ev["labels"] + ev["unscored_labels"])
        ev["train_s"], ev["score_s"] = round(train_s, 1), round(score_s, 1)
        ts = pc.cast(table.column("ts"), pa.int64())
        lo, hi = int(t_end.timestamp() * 1e6), int((t_end + timedelta(hours=score_h)).timestamp() * 1e6)
        events = labelled_events(table.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))))
        ev["incidents"] = match_events(fleet.incidents(limit=100_000), events).as_dict()
        fleet.close()
        return ev
    finally:
        shutil.rmtree(home, ignore_errors=True)


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=30)
    ap.add_argument("--train-hours", type=int, default=24)
    ap.add_argument("--score-hours", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--scenarios", default="mixed,daily-strong,device-scales,short-history")
    args = ap.parse_args(argv)
    header = ["scenario", "setting", "precision", "recall", "F1", *[f"{k} ev.rec" for k in KINDS], "false-alarm rate",
              "incidents", "incidents / event", "incident precision", "train s", "score s"]
    print(f"{args.devices} devices x 8 sensors, {args.train_hours} h training, {args.score_hours} h scored, "
          f"1-min readings, 1% anomalies, seed {args.seed}", file=sys.stderr)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in args.scenarios.split(","):
        table = scenario(name, args.devices, args.train_hours, args.score_hours, args.seed)
        for label, settings in SETTINGS.items():
            ev = run_one(table, settings, args.train_hours, args.score_hours, args.workers)
            kinds = [fmt(ev["by_kind"].get(k, {}).get("event_recall")) for k in KINDS]
            row = [name, label, fmt(ev["precision"]), fmt(ev["recall"]), fmt(ev["f1"]), *kinds,
                   f"{ev['alarm_rate']:.5f}", ev["incidents"]["incidents"], fmt(ev["incidents"]["incidents_per_event"]),
                   fmt(ev["incidents"]["precision"]), ev["train_s"], ev["score_s"]]
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
            print(lines[-1], file=sys.stderr)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
