"""SKAB: the per-device model kind beside the two per-sensor baselines, measured in one run.

    python bench/skab_device.py [--datasets ../shared/datasets] [--pipeline] [--ablations] [--simulated]

Protocol (SKAB's own, as ``../shared/datasets/README.md`` states it): ``valve1/`` holds 16
experiments, each one device with 8 sensors; train on an experiment's first 400 rows, score the
rest. **Point F1** over all experiments' scored rows together; **event recall**: share of the
``anomaly`` segments with at least one flagged row; **event F1**: harmonic mean of event recall and
point precision. The device kind flags a device-time by its own decision (`fleetscore.core.device`);
the per-sensor baselines flag it when any of its 8 sensors is flagged:

* classic OC-SVM: per sensor ``StandardScaler + OneClassSVM(nu=0.0001, gamma=0.01)`` on the raw value;
* robust z-score: per sensor ``|value - median| / (1.4826 MAD) > 4`` with the training part's median and MAD.

The device kind's features of a scored row read the ``HISTORY`` rows before it (the last training
rows for the first scored ones), as a deployment scoring the readings after training would. Also
printed: the share of rows flagged on SKAB's ``anomaly-free`` run (trained on its first 400 rows;
also on its first half, to show what a training window that has seen the run's drift does), and
which sensor the device kind names first during the valve closures. ``--pipeline`` also runs SKAB
through fleetscore's real pipeline (`fleetscore.api.Fleet`: import each experiment's first 400 rows,
train with nothing pinned, so ``auto`` decides per experiment whether its sensors move together
enough for a device model; import the rest, score it as one span and as hourly windows, read the
predictions back), same protocol, beside the core-level figure. ``--ablations`` adds the
device kind with its choices undone one at a time, and at other alarm rates (same protocol), for
the record of what helps and how much the figure depends on the calibration's target; ``--simulated``
the kind on fleetscore's simulator, whose sensors do not move together (what it costs there).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core import device
from fleetscore.core.calibrate import DEFAULT_ALARM_RATE

TRAIN_ROWS = 400
DEFAULT_DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


def load(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sensor names, readings (rows, sensors), anomaly labels) of one SKAB csv."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    head = rows[0]
    sensors = [c for c in head[1:] if c not in ("anomaly", "changepoint")]
    data = np.array([[float(v) if v else np.nan for v in r[1:1 + len(sensors)]] for r in rows[1:]])
    labels = np.zeros(len(data), dtype=bool)
    if "anomaly" in head:
        col = head.index("anomaly")
        labels = np.array([float(r[col]) > 0 for r in rows[1:]])
    return sensors, data, labels


def experiments(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    files = sorted((root / "skab" / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
    if not files:
        sys.exit(f"no SKAB valve1 experiments under {root / 'skab' / 'valve1'} (use --datasets PATH)")
    return [(f.stem, *load(f)[1:]) for f in files]


# ------------------------------------------------------------------------------------------- detectors

def flag_device(values: np.ndarray, train: int,
                alarm_rate: float = DEFAULT_ALARM_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Device kind: (flags of rows train.., top sensor of each of them)."""
    params = device.fit_one(values[:train], alarm_rate)
    feats = device.device_features(values)[train:]
    scores = device.score(params, np.zeros(len(feats), dtype=np.int64), feats)
    return scores.is_anomaly, scores.top_sensors[:, 0]


def pipeline(root: Path, data: list[tuple[str, np.ndarray, np.ndarray]], free: np.ndarray
             ) -> tuple[dict[str, list[np.ndarray]], np.ndarray, dict[str, object]]:
    """Each experiment's flags (rows TRAIN_ROWS..) through `Fleet` with the defaults, per window mode, and the
    anomaly-free run's; plus what ``auto`` chose and the runs' timings."""
    import shutil
    import tempfile

    from fleetscore.api import Fleet

    sensors = load(root / "skab" / "valve1" / f"{data[0][0]}.csv")[0]
    files = {name: root / "skab" / "valve1" / f"{name}.csv" for name, _, _ in data}
    times = {name: np.array([r.split(";")[0].replace(" ", "T") for r in path.read_text().splitlines()[1:]],
                            dtype="datetime64[us]") for name, path in files.items()}
    free_path = root / "skab" / "anomaly-free" / "anomaly-free.csv"
    times["free"] = np.array([r.split(";")[0].replace(" ", "T") for r in free_path.read_text().splitlines()[1:]],
                             dtype="datetime64[us]")
    values = {name: v for name, v, _ in data} | {"free": free}

    def table(part: slice) -> pa.Table:
        ts, dev, sen, val = [], [], [], []
        for name, v in values.items():
            for j, sensor in enumerate(sensors):
                ts.append(times[name][part].astype(np.int64))
                val.append(v[part, j])
                dev += [f"valve1-{name}" if name != "free" else "anomaly-free"] * len(val[-1])
                sen += [sensor] * len(val[-1])
        return pa.table({"ts": pa.array(np.concatenate(ts), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                         "device": pa.array(dev, pa.string()), "sensor": pa.array(sen, pa.string()),
                         "value": pa.array(np.concatenate(val), pa.float64())})

    def iso(t: np.datetime64) -> str:
        return str(t.astype("datetime64[us]")) + "Z"

    home = Path(tempfile.mkdtemp(prefix="fleetscore-skab-"))
    info: dict[str, object] = {}
    out: dict[str, list[np.ndarray]] = {}
    free_flags = np.zeros(0, dtype=bool)
    try:
        fleet = Fleet.open(home / "home", workers=1)
        fleet.import_table(table(slice(0, TRAIN_ROWS)))
        lo = min(t[0] for t in times.values())
        hi = max(t[TRAIN_ROWS - 1] for t in times.values()) + np.timedelta64(1, "us")
        started = time.perf_counter()
        version = fleet.train(iso(lo), iso(hi), workers=1).version
        info["train_s"] = time.perf_counter() - started
        manifest = fleet.models(version)
        kinds = dict(zip(manifest.column("device").to_pylist(), manifest.column("kind").to_pylist()))
        info["device_kind"] = sorted(d for d, k in kinds.items() if k == "device")
        info["per_sensor"] = sorted(d for d, k in kinds.items() if k != "device")
        fleet.import_table(table(slice(TRAIN_ROWS, None)))
        first = min(t[TRAIN_ROWS] for t in times.values())
        end = max(t[-1] for t in times.values()) + np.timedelta64(1, "us")
        hours = np.unique(np.concatenate([t[TRAIN_ROWS:].astype("datetime64[h]") for t in times.values()]))
        for mode, windows in (("span", [(first, end)]),
                              ("hourly", [(h.astype("datetime64[us]"), (h + 1).astype("datetime64[us]")) for h in hours])):
            started = time.perf_counter()
            preds = pa.concat_tables([fleet.predictions(run_id=fleet.score(iso(a), iso(b), version=version, workers=1).run_id)
                                      for a, b in windows])
            info[f"{mode}_s"] = time.perf_counter() - started
            flagged = preds.filter(preds.column("is_anomaly")).select(["ts", "device"]).to_pylist()
            hit = {(r["device"], np.datetime64(r["ts"].replace(tzinfo=None), "us")) for r in flagged}
            out[mode] = [np.array([(f"valve1-{name}", t) in hit for t in times[name][TRAIN_ROWS:]]) for name, _, _ in data]
            scored = _scored_rows(preds, {(f"valve1-{n}" if n != "free" else "anomaly-free"): t[TRAIN_ROWS]
                                          for n, t in times.items()})
            if mode == "span":
                free_flags = np.array([("anomaly-free", t) in hit for t in times["free"][TRAIN_ROWS:]])
                info["scores"] = scored
            else:  # both modes also score the training rows their windows hold: compare the rows after training
                info["windows_equal"] = all(info["scores"].column(c).equals(scored.column(c))
                                            for c in ("ts", "device", "sensor", "score", "severity"))
        fleet.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return out, free_flags, info


def _scored_rows(preds: pa.Table, first: dict[str, np.datetime64]) -> pa.Table:
    """Predictions of each device's readings from its first scored one on, sorted by key and time."""

    ts = pc.cast(preds.column("ts"), pa.int64()).to_numpy()
    cut = np.array([first[d].astype(np.int64) for d in preds.column("device").to_pylist()])
    keep = preds.filter(pa.array(ts >= cut))
    return keep.sort_by([("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")])


def flag_ocsvm(values: np.ndarray, train: int) -> np.ndarray:
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    out = np.zeros(len(values) - train, dtype=bool)
    for j in range(values.shape[1]):
        scaler = StandardScaler().fit(values[:train, [j]])
        svm = OneClassSVM(nu=0.0001, gamma=0.01).fit(scaler.transform(values[:train, [j]]))
        out |= svm.predict(scaler.transform(values[train:, [j]])) < 0
    return out


def flag_zscore(values: np.ndarray, train: int) -> np.ndarray:
    med = np.median(values[:train], axis=0)
    mad = np.median(np.abs(values[:train] - med), axis=0) * 1.4826
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(values[train:] - med) / mad  # MAD 0: any other value is infinitely far (as the README measured)
    return (z > 4).any(axis=1)


# --------------------------------------------------------------------------------------------- metrics

def segments(labels: np.ndarray) -> np.ndarray:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], labels.astype(np.int8), [0]])))
    return edges.reshape(-1, 2)


def evaluate(flags: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, float]:
    f, y = np.concatenate(flags), np.concatenate(labels)
    tp = int(np.sum(f & y))
    precision = tp / max(int(f.sum()), 1)
    recall = tp / max(int(y.sum()), 1)
    hits = [bool(fl[a:b].any()) for fl, lab in zip(flags, labels) for a, b in segments(lab)]
    event_recall = float(np.mean(hits)) if hits else 0.0

    def f1(a: float, b: float) -> float:
        return 2 * a * b / (a + b) if a + b else 0.0

    return {"f1": f1(precision, recall), "precision": precision, "recall": recall,
            "event_recall": event_recall, "event_f1": f1(event_recall, precision)}


def run(detector: Callable[[np.ndarray, int], np.ndarray], data: list[tuple[str, np.ndarray, np.ndarray]],
        free: np.ndarray) -> tuple[dict[str, float], float, float]:
    started = time.perf_counter()
    flags = [np.asarray(detector(values, TRAIN_ROWS)) for _, values, _ in data]
    result = evaluate(flags, [labels[TRAIN_ROWS:] for _, _, labels in data])
    fa = float(np.mean(detector(free, TRAIN_ROWS)))
    fa_half = float(np.mean(detector(free, len(free) // 2)))
    result["seconds"] = time.perf_counter() - started
    return result, fa, fa_half


# ------------------------------------------------------------------------------------------- ablations

@contextmanager
def patched(**values: object) -> Iterator[None]:
    old = {k: getattr(device, k) for k in values}
    for k, v in values.items():
        setattr(device, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(device, k, v)


ABLATIONS: dict[str, dict[str, object]] = {
    "no widening for short effective samples": {"widening": lambda n_eff, tail: 1.0},
    "no recent feature (level only)": {"MIN_RECENT": 10**9},
    "recent over 5 readings": {"WINDOW": 5, "MIN_RECENT": 4, "TRIM": 1},
    "recent over 10 readings": {"WINDOW": 10, "MIN_RECENT": 7},
    "recent over 20 readings": {"WINDOW": 20, "MIN_RECENT": 14},
    "recent untrimmed (plain mean)": {"TRIM": 0},
    "no reweighting of the correlation": {"REWEIGHTS": 0},
    "all components (full Mahalanobis)": {"EXPLAINED": 1.0 + 1e-9},
}


def simulated(seeds: tuple[int, ...] = (3, 4, 5), devices: int = 30, sensors: int = 8) -> None:
    """The device kind on fleetscore's simulator: independent sensors with daily cycles, 1% anomalies.

    Not what the kind is for (its sensors do not move together); shows what it costs there. Train on
    24 hours (anomalies included), score the next 6; device-time labelled when any sensor is. False
    alarms are counted outside the `device.WINDOW` readings after a labelled one (where the recent
    level still holds the anomaly).
    """
    from datetime import UTC, datetime

    from fleetscore.core.simulate import ANOMALY_KINDS, simulate_fleet

    train = 24 * 60
    stats = {name: {"fa": 0, "normal": 0, **{k: [0, 0] for k in ANOMALY_KINDS}} for name in ("device kind", "z-score")}
    for seed in seeds:
        table = simulate_fleet(devices, sensors, datetime(2026, 1, 1, tzinfo=UTC), 30, 60.0, 0.01, seed=seed)
        shape = (devices, sensors, -1)
        values = table.column("value").to_numpy().reshape(shape).transpose(0, 2, 1)
        kinds = np.array(table.column("anomaly_kind").to_pylist()).reshape(shape).transpose(0, 2, 1)
        for d in range(devices):
            flagged = {"device kind": flag_device(values[d], train)[0], "z-score": flag_zscore(values[d], train)}
            labelled = (kinds[d] != "").any(axis=1)
            near = np.convolve(labelled, np.ones(device.WINDOW), "full")[:len(labelled)][train:] > 0
            for name, flags in flagged.items():
                st = stats[name]
                st["fa"] += int(np.sum(flags & ~near))
                st["normal"] += int(np.sum(~near))
                for k in ANOMALY_KINDS:
                    for s in range(sensors):
                        for a, b in segments(kinds[d, train:, s] == k):
                            st[k][0] += bool(flags[a:b].any())
                            st[k][1] += 1
    print(f"\nSimulator ({len(seeds)} seeds x {devices} devices x {sensors} independent sensors; train 24 h, score 6 h)\n")
    print("| | false alarms per device-time | " + " | ".join(f"{k} event recall" for k in ANOMALY_KINDS) + " |")
    print("|---|---|" + "---|" * len(ANOMALY_KINDS))
    for name, st in stats.items():
        cells = " | ".join(f"{st[k][0]}/{st[k][1]}" for k in ANOMALY_KINDS)
        label = "device kind" if name == "device kind" else "robust z-score > 4, per sensor"
        print(f"| {label} | {st['fa'] / max(st['normal'], 1):.5f} | {cells} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--ablations", action="store_true", help="also run the device kind with its choices undone")
    parser.add_argument("--simulated", action="store_true", help="also run it on the simulator (independent sensors)")
    parser.add_argument("--pipeline", action="store_true", help="also run SKAB through Fleet with the defaults (auto)")
    args = parser.parse_args(argv)
    data = experiments(args.datasets)
    _, free, _ = load(args.datasets / "skab" / "anomaly-free" / "anomaly-free.csv")

    tops: Counter[int] = Counter()
    for _, values, labels in data:
        flags, top = flag_device(values, TRAIN_ROWS)
        tops.update(top[flags & labels[TRAIN_ROWS:]].tolist())

    rows = [("device kind (robust PCA, T² + Q)", *run(lambda v, t: flag_device(v, t)[0], data, free)),
            ("classic OC-SVM settings, per sensor", *run(flag_ocsvm, data, free)),
            ("robust z-score > 4, per sensor", *run(flag_zscore, data, free))]
    if args.ablations:
        for name, values in ABLATIONS.items():
            with patched(**values):
                rows.append((f"device kind, {name}", *run(lambda v, t: flag_device(v, t)[0], data, free)))
        for rate in (1e-3, 1e-5, 1e-6):
            rows.append((f"device kind, alarm rate {rate:g} (default {DEFAULT_ALARM_RATE:g})",
                         *run(lambda v, t, r=rate: flag_device(v, t, r)[0], data, free)))

    print(f"SKAB valve1, {len(data)} experiments, train on the first {TRAIN_ROWS} rows, score the rest "
          f"({sum(len(v) - TRAIN_ROWS for _, v, _ in data)} device-times)\n")
    print("| | point F1 | precision | recall | event recall | event F1 | anomaly-free: flagged share "
          "(train 400 rows) | (train first half) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r, fa, fa_half in rows:
        print(f"| {name} | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['event_recall']:.3f} | "
              f"{r['event_f1']:.3f} | {fa:.3f} | {fa_half:.3f} | {r['seconds']:.1f} |")
    names = load(args.datasets / "skab" / "valve1" / f"{data[0][0]}.csv")[0]
    total = sum(tops.values())
    named = ", ".join(f"{names[s] if s >= 0 else 'none'} {n / total:.0%}" for s, n in tops.most_common(4))
    print(f"\nDevice kind, first of top_sensors on the flagged rows inside valve1's anomaly segments: {named}")
    print(f"Device features need {device.HISTORY} readings of history (device-times) before a scored one.")
    if args.pipeline:
        flags, free_flags, info = pipeline(args.datasets, data, free)
        labels = [lab[TRAIN_ROWS:] for _, _, lab in data]
        print(f"\nThrough the pipeline (Fleet: import, train with nothing pinned, score, predictions); auto chose the "
              f"device kind for {len([d for d in info['device_kind'] if d != 'anomaly-free'])} of {len(data)} experiments"
              + (f" (per-sensor robust models for {', '.join(d for d in info['per_sensor'] if d != 'anomaly-free')})"
                 if [d for d in info["per_sensor"] if d != "anomaly-free"] else "")
              + f"; anomaly-free run: {'device kind' if 'anomaly-free' in info['device_kind'] else 'per sensor'}\n")
        print("| | point F1 | precision | recall | event recall | event F1 | anomaly-free: flagged share | seconds |")
        print("|---|---|---|---|---|---|---|---|")
        core = rows[0][1]
        print(f"| core level (device kind on every experiment) | {core['f1']:.3f} | {core['precision']:.3f} | "
              f"{core['recall']:.3f} | {core['event_recall']:.3f} | {core['event_f1']:.3f} | {rows[0][2]:.3f} | "
              f"{core['seconds']:.1f} |")
        for mode in ("span", "hourly"):
            r = evaluate(flags[mode], labels)
            print(f"| pipeline, defaults (auto), {'one span' if mode == 'span' else 'hourly windows'} | {r['f1']:.3f} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} | {r['event_recall']:.3f} | {r['event_f1']:.3f} | "
                  f"{float(np.mean(free_flags)):.3f} | {info['train_s'] + info[f'{mode}_s']:.1f} |")
        print(f"\nHourly windows score exactly as one span: {info['windows_equal']}")
    if args.simulated:
        simulated()


if __name__ == "__main__":
    main()
