"""Real labelled data: fleetscore's defaults beside two simple baselines on NAB and SKAB.

    python bench/realdata.py [--datasets PATH] [--windows span|hourly|both] [--only CATEGORY[,...]]
                             [--skip nab-score,skab]

The protocol of ``shared/datasets/README.md`` (``--datasets``, default ``<repo>/../shared/datasets``):

* NAB, 51 series, one series = one (device, sensor): train on the first 15% of its rows, score the
  rest. Event recall = share of label windows ending after the cut with a flagged reading inside;
  point precision = flagged readings inside any window / all flagged readings; F1 of the two (0
  when nothing is flagged), averaged per category and over the 45 labelled series; flags per
  1,000 readings on the 5 ``artificialNoAnomaly`` series.
* NAB score (``shared/tools/nabscore.py``, imported from there at run time; it needs pandas),
  standard profile, 51 series: trained on NAB's probation period, the first min(floor(0.15 n),
  750) rows; every row given to the scorer, 0 in probation. The label-free decision (0/1,
  ``score_fixed`` at 0.5) and a continuous score swept over the corpus (``score_corpus``:
  fleetscore's severity / 100, the z-score baseline's z / (1 + z)).
* SKAB valve1, 16 experiments: one experiment = one device with 8 sensor models, trained on its
  first 400 rows; a device-time is flagged when any of its sensors is. Point F1 / precision /
  recall over all scored rows together, and event F1 (event recall of the ``anomaly`` segments
  with point precision). Also flags per 1,000 device-times on the ``anomaly-free`` run.

Baselines, per series and sensor, on the training part: scikit-learn StandardScaler +
OneClassSVM(nu=0.0001, gamma=0.01) on the raw value (the classic design's settings), and a robust
z-score |v - median| / (1.4826 MAD) > 4.

fleetscore goes through the real pipeline: every series moved by whole weeks to start in one
reference week (times of day and weekdays kept, so nothing its models see changes), a fresh home
per group of series whose times then fit together (each series its own device; all of NAB is one
home), only the training rows imported, ``train`` with nothing
pinned over all of them, then the remaining rows imported and scored. ``--windows span`` scores
the scored part in one run; ``hourly`` scores it as the scheduler does, one run per hour
``[HH:00, HH+1:00)`` (hours without a reading to score are skipped: those runs score nothing), each
run scoring every series of the home at once (the whole corpus in about ten minutes);
``both`` reports the two side by side.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa

from fleetscore.api import Fleet

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = REPO.parent / "shared" / "datasets"
NABSCORE = REPO.parent / "shared" / "tools" / "nabscore.py"
NAB_CATEGORIES = ("artificialNoAnomaly", "artificialWithAnomaly", "realAWSCloudwatch", "realAdExchange",
                  "realTraffic", "realTweets")
NO_ANOMALY = "artificialNoAnomaly"
TRAIN_SHARE = 0.15
NAB_PROBATION_MAX = 750
SKAB_TRAIN_ROWS = 400
SKAB_SENSORS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
                "Voltage", "Volume Flow RateRMS")
Z_THRESHOLD = 4.0
OCSVM = {"nu": 0.0001, "gamma": 0.01}
#: Series share a home when the home's readings then span at most this long (fewer hourly runs, short reads).
HOME_SPAN = np.timedelta64(120, "D")
HOUR = np.timedelta64(1, "h")
WEEK = np.timedelta64(7, "D")
#: Every series is moved by whole weeks to start in the week of this Monday (see `aligned`).
REFERENCE = np.datetime64("2015-01-05T00:00:00", "us")
US = np.timedelta64(1, "us")
MODES = ("span", "hourly")
DETECTORS = ("ocsvm", "zscore", "fleetscore")


@dataclass
class Series:
    """One (device, sensor): its readings in file order, labelled anomaly windows and training rows."""

    key: str
    device: str
    sensor: str
    ts: np.ndarray  # datetime64[us], naive UTC
    value: np.ndarray
    windows: list[tuple[np.datetime64, np.datetime64]]
    train_rows: int
    labels: np.ndarray | None = None  # SKAB: anomaly 0/1 per row

    @property
    def category(self) -> str:
        return self.key.split("/")[0]


@dataclass
class Scored:
    """Per detector (and window mode), each row's flag and continuous score (NaN = not scored)."""

    flags: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)


# --- data ----------------------------------------------------------------------------------------
def _ts(text: list[str]) -> np.ndarray:
    return np.array(text, dtype="datetime64[us]")


def load_nab(root: Path, train_share: float | None, categories: set[str] | None) -> list[Series]:
    """NAB's series; ``train_share`` None means NAB's probation rule for the training rows."""
    windows = json.loads((root / "label_windows.json").read_text())
    out = []
    for key in sorted(windows):
        category, name = key.split("/")
        if categories and category not in categories:
            continue
        with open(root / key, newline="") as f:
            rows = list(csv.DictReader(f))
        n = len(rows)
        train = math.floor(train_share * n) if train_share else min(math.floor(TRAIN_SHARE * n), NAB_PROBATION_MAX)
        out.append(Series(key, name.removesuffix(".csv"), "value", _ts([r["timestamp"] for r in rows]),
                          np.array([float(r["value"]) for r in rows]),
                          [(np.datetime64(a, "us"), np.datetime64(b, "us")) for a, b in windows[key]], train))
    return out


def load_skab(path: Path, device: str) -> list[Series]:
    """One SKAB experiment: 8 series (one per sensor) of one device, with the per-row anomaly labels."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    ts = _ts([r["datetime"].replace(" ", "T") for r in rows])
    labels = np.array([float(r.get("anomaly") or 0) for r in rows]) > 0
    return [Series(f"{path.parent.name}/{path.name}", device, s, ts, np.array([float(r[s]) for r in rows]), [],
                   SKAB_TRAIN_ROWS, labels) for s in SKAB_SENSORS]


# --- baselines -----------------------------------------------------------------------------------
def zscore(s: Series) -> np.ndarray:
    """Robust z of every row against the training part's median and MAD (NaN in the training part)."""
    train = s.value[: s.train_rows]
    med = np.median(train)
    mad = 1.4826 * np.median(np.abs(train - med))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(s.value - med) / mad
    z[: s.train_rows] = np.nan
    return z  # MAD 0: a value off the median is infinitely far, one on it 0/0 (NaN, never flagged)


def ocsvm_flags(s: Series) -> np.ndarray:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    model = make_pipeline(StandardScaler(), OneClassSVM(**OCSVM))
    model.fit(s.value[: s.train_rows].reshape(-1, 1))
    flags = np.zeros(len(s.value), dtype=bool)
    flags[s.train_rows:] = model.predict(s.value[s.train_rows:].reshape(-1, 1)) < 0
    return flags


def baselines(series: list[Series], out: dict[str, Scored]) -> None:
    for s in series:
        z = zscore(s)
        scored = out.setdefault(series_id(s), Scored())
        scored.flags["ocsvm"] = ocsvm_flags(s)
        scored.flags["zscore"] = np.nan_to_num(z, nan=0.0) > Z_THRESHOLD
        scored.scores["zscore"] = np.where(np.isnan(z), 0.0, z / (1.0 + z))
        scored.scores["zscore"][np.isinf(z)] = 1.0


# --- fleetscore through its pipeline -------------------------------------------------------------
def series_id(s: Series) -> str:
    return f"{s.device}/{s.sensor}"


def homes(series: list[Series]) -> list[list[Series]]:
    """Series grouped by start time so that a group's readings span at most ``HOME_SPAN``."""
    groups: list[list[Series]] = []
    for s in sorted(series, key=lambda s: (s.ts.min(), s.device, s.sensor)):
        if groups and max(g.ts.max() for g in groups[-1] + [s]) - groups[-1][0].ts.min() <= HOME_SPAN:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def _table(parts: list[tuple[Series, slice]]) -> pa.Table:
    ts = np.concatenate([s.ts[sl] for s, sl in parts])
    return pa.table({
        "ts": pa.array(ts.astype("int64"), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "device": pa.array(np.concatenate([np.full(len(s.ts[sl]), s.device, dtype=object) for s, sl in parts]), pa.string()),
        "sensor": pa.array(np.concatenate([np.full(len(s.ts[sl]), s.sensor, dtype=object) for s, sl in parts]), pa.string()),
        "value": pa.array(np.concatenate([s.value[sl] for s, sl in parts]), pa.float64()),
    })


def _iso(t: np.datetime64) -> str:
    return str(t.astype("datetime64[us]")) + "Z"


def fleet_home(group: list[Series], modes: tuple[str, ...], out: dict[str, Scored], timings: dict[str, float]) -> None:
    """Train and score one home of series with fleetscore's defaults; fills flags and severities per mode."""
    root = Path(tempfile.mkdtemp(prefix="fleetscore-realdata-"))
    try:
        fleet = Fleet.open(root / "home", workers=1)
        fleet.import_table(_table([(s, slice(0, s.train_rows)) for s in group]))
        lo = min(s.ts[0] for s in group)
        hi = max(s.ts[: s.train_rows].max() for s in group) + US
        t = time.perf_counter()
        version = fleet.train(_iso(lo), _iso(hi), workers=1).version
        timings["train"] += time.perf_counter() - t
        fleet.import_table(_table([(s, slice(s.train_rows, None)) for s in group]))
        first = min(s.ts[s.train_rows:].min() for s in group)
        end = max(s.ts.max() for s in group) + US
        for mode in modes:
            t = time.perf_counter()
            if mode == "span":
                windows = [(first, end)]
            else:
                scored_hours = np.unique(np.concatenate(
                    [s.ts[s.train_rows:].astype("datetime64[h]") for s in group]))
                windows = [(h.astype("datetime64[us]"), (h + 1).astype("datetime64[us]")) for h in scored_hours]
            preds = []
            for a, b in windows:
                run = fleet.score(_iso(a), _iso(b), version=version, workers=1)
                got = fleet.predictions(run_id=run.run_id)
                preds.append(got.select([c for c in ("ts", "device", "sensor", "is_anomaly", "severity")
                                         if c in got.column_names]))
            timings[mode] += time.perf_counter() - t
            _assign(group, pa.concat_tables(preds, promote_options="default"), mode, out)
        fleet.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _assign(group: list[Series], preds: pa.Table, mode: str, out: dict[str, Scored]) -> None:
    """Each scored row of the group's series gets its prediction (rows repeating a timestamp share it)."""
    key = np.char.add(np.char.add(np.array(preds.column("device").to_pylist(), dtype=str), "/"),
                      np.array(preds.column("sensor").to_pylist(), dtype=str))
    ts = preds.column("ts").cast(pa.int64()).to_numpy()
    flag = preds.column("is_anomaly").to_numpy(zero_copy_only=False)
    sev = (preds.column("severity").to_numpy(zero_copy_only=False).astype(np.float64)
           if "severity" in preds.column_names else np.full(len(ts), np.nan))
    for s in group:
        rows = np.flatnonzero(key == series_id(s))
        order = rows[np.argsort(ts[rows], kind="stable")]
        want = s.ts.astype("int64")
        pos = np.clip(np.searchsorted(ts[order], want), 0, max(len(order) - 1, 0))
        found = (len(order) > 0) & (ts[order][pos] == want) if len(order) else np.zeros(len(want), dtype=bool)
        found[: s.train_rows] = False
        f = np.zeros(len(want), dtype=bool)
        v = np.full(len(want), np.nan)
        f[found] = flag[order][pos[found]]
        v[found] = sev[order][pos[found]]
        scored = out.setdefault(series_id(s), Scored())
        scored.flags[f"fleetscore.{mode}"] = f
        scored.scores[f"fleetscore.{mode}"] = np.where(np.arange(len(want)) < s.train_rows, 0.0, v / 100.0)
        missing = int((~found[s.train_rows:]).sum())
        if missing:
            print(f"warning: {s.key} {mode}: {missing} scored row(s) without a prediction", file=sys.stderr)


def aligned(s: Series) -> Series:
    """``s`` moved by whole weeks so that it starts in the week of `REFERENCE` (times of day and days of the
    week kept): series of different years then share a home, and hourly runs score many series at once."""
    weeks = (s.ts[0] - REFERENCE) // WEEK
    shift = weeks * WEEK
    return replace(s, ts=s.ts - shift, windows=[(a - shift, b - shift) for a, b in s.windows])


def fleetscore(series: list[Series], modes: tuple[str, ...], out: dict[str, Scored]) -> dict[str, float]:
    timings: dict[str, float] = defaultdict(float)
    for group in homes([aligned(s) for s in series]):
        fleet_home(group, modes, out, timings)
    return timings


# --- metrics -------------------------------------------------------------------------------------
def nab_f1(s: Series, flags: np.ndarray) -> tuple[float, float, float]:
    """(F1, point precision, event recall) of one NAB series' flags on its scored rows."""
    scored = np.arange(len(s.ts)) >= s.train_rows
    hit = flags & scored
    inside = np.zeros(len(s.ts), dtype=bool)
    cut = s.ts[s.train_rows]
    counted = 0
    caught = 0
    for a, b in s.windows:
        win = (s.ts >= a) & (s.ts <= b)
        inside |= win
        if b >= cut:
            counted += 1
            caught += bool((hit & win).any())
    n_flags = int(hit.sum())
    precision = float((hit & inside).sum()) / n_flags if n_flags else 0.0
    recall = caught / counted if counted else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return f1, precision, recall


def skab_metrics(experiments: list[list[Series]], results: dict[str, Scored], det: str) -> dict[str, float]:
    """Point F1 / precision / recall over all experiments' scored device-times, event recall and event F1."""
    tp = fp = fn = 0
    events = caught = 0
    rows = 0
    for sensors in experiments:
        s0 = sensors[0]
        flagged = np.logical_or.reduce([results[series_id(s)].flags[det] for s in sensors])[s0.train_rows:]
        label = s0.labels[s0.train_rows:]
        tp += int((flagged & label).sum())
        fp += int((flagged & ~label).sum())
        fn += int((~flagged & label).sum())
        rows += len(label)
        edges = np.diff(np.r_[0, label.astype(np.int8), 0])
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            events += 1
            caught += bool(flagged[a:b].any())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    er = caught / events if events else 0.0
    return {"f1": _hm(p, r), "precision": p, "recall": r, "event_recall": er, "event_f1": _hm(p, er),
            "per_1000": 1000.0 * (tp + fp) / max(rows, 1)}


def _hm(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def nabscore_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nabscore", NABSCORE)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {NABSCORE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nab_scores(series: list[Series], results: dict[str, Scored], columns: list[str],
               windows_path: Path) -> dict[str, dict[str, float]]:
    """NAB score per detector: the decision at 0.5 and, where a continuous score exists, swept."""
    import pandas as pd

    nab = nabscore_module()
    windows = json.loads(windows_path.read_text())
    out: dict[str, dict[str, float]] = {}
    for det in columns:
        def frame(s: Series, col: np.ndarray) -> pd.DataFrame:
            a = np.where(np.arange(len(s.ts)) < s.train_rows, 0.0, col)
            return pd.DataFrame({"timestamp": s.ts.astype("datetime64[ns]"), "anomaly_score": a})

        decision = {s.key: frame(s, results[series_id(s)].flags[det].astype(float)) for s in series}
        out[det] = {"decision": nab.score_fixed(decision, windows, threshold=0.5)}
        if det in results[series_id(series[0])].scores:
            swept = {s.key: frame(s, np.nan_to_num(results[series_id(s)].scores[det], nan=0.0)) for s in series}
            out[det]["swept"] = nab.score_corpus(swept, windows)
    return out


# --- report --------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def f3(x: float) -> str:
    return f"{x:.3f}"


def report_nab(series: list[Series], results: dict[str, Scored], dets: list[str]) -> str:
    per_cat: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    flags: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in series:
        res = results[series_id(s)]
        for det in dets:
            if s.category == NO_ANOMALY:
                flags[det][0] += int(res.flags[det][s.train_rows:].sum())
                flags[det][1] += len(s.ts) - s.train_rows
            elif s.windows:
                per_cat[s.category][det].append(nab_f1(s, res.flags[det])[0])
    rows = [[cat, len(v[dets[0]]), *(f3(np.mean(v[d])) for d in dets)] for cat, v in sorted(per_cat.items())]
    allf = {d: [f for v in per_cat.values() for f in v[d]] for d in dets}
    rows.append(["**all labelled**", len(allf[dets[0]]), *(f"**{f3(np.mean(allf[d]))}**" for d in dets)])
    if flags:
        rows.append(["flags per 1,000 readings, " + NO_ANOMALY, "", *(f"{1000 * flags[d][0] / max(flags[d][1], 1):.1f}"
                                                                  for d in dets)])
    return table(["NAB mean F1", "series", *dets], rows)


def series_detail(series: list[Series], results: dict[str, Scored], dets: list[str]) -> str:
    rows = []
    for s in series:
        if not s.windows and s.category != NO_ANOMALY:
            continue
        cells = []
        for d in dets:
            f1, p, r = nab_f1(s, results[series_id(s)].flags[d])
            cells.append(f"{f1:.2f} ({p:.2f}/{r:.2f}, {int(results[series_id(s)].flags[d].sum())})")
        rows.append([s.key, *cells])
    return table(["series", *(f"{d} F1 (P/R, flags)" for d in dets)], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    ap.add_argument("--windows", choices=("span", "hourly", "both"), default="span")
    ap.add_argument("--only", default="", help="comma-separated NAB categories (and/or 'skab') to run")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: nab-score, skab")
    ap.add_argument("--detail", action="store_true", help="also print F1 (precision/recall, flags) per series")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    modes = MODES if args.windows == "both" else (args.windows,)
    only = {c for c in args.only.split(",") if c}
    skip = {c for c in args.skip.split(",") if c}
    cats = only - {"skab"} or (set() if only else set(NAB_CATEGORIES))
    dets = ["ocsvm", "zscore", *(f"fleetscore.{m}" for m in modes)]
    started = time.perf_counter()
    print(f"datasets {args.datasets}, windows {args.windows}", file=sys.stderr)

    if cats:
        series = load_nab(args.datasets / "nab", TRAIN_SHARE, cats)
        results: dict[str, Scored] = {}
        baselines(series, results)
        timings = fleetscore(series, modes, results)
        print("\n## NAB, F1 protocol (train on the first 15% of each series)\n")
        print(report_nab(series, results, dets))
        if args.detail:
            print()
            print(series_detail(series, results, dets))
        print("\nfleetscore seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), file=sys.stderr)

        if "nab-score" not in skip:
            probation = load_nab(args.datasets / "nab", None, cats)
            nab_results = dict(results)
            redo = [p for p, s in zip(probation, series) if p.train_rows != s.train_rows]
            for p in redo:
                nab_results.pop(series_id(p))
            baselines(redo, nab_results)
            fleetscore(redo, modes, nab_results)
            scores = nab_scores(probation, nab_results, dets, args.datasets / "nab" / "label_windows.json")
            rows = [[d, f"{v['decision']:.1f}", f"{v['swept']:.1f}" if "swept" in v else "–"] for d, v in scores.items()]
            print(f"\n## NAB score, standard profile, {len(probation)} series (trained on NAB's probation period)\n")
            print(table(["detector", "decision (score_fixed 0.5)", "continuous score swept (score_corpus)"], rows))

    if "skab" not in skip and (not only or "skab" in only):
        skab = args.datasets / "skab"
        files = sorted((skab / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
        experiments = [load_skab(p, f"valve1-{p.stem}") for p in files]
        free = [load_skab(p, "anomaly-free") for p in sorted((skab / "anomaly-free").glob("*.csv"))]
        results = {}
        flat = [s for e in experiments + free for s in e]
        baselines(flat, results)
        fleetscore(flat, modes, results)
        rows = []
        for d in dets:
            m = skab_metrics(experiments, results, d)
            fr = skab_metrics(free, results, d)["per_1000"]
            rows.append([d, f3(m["f1"]), f3(m["precision"]), f3(m["recall"]), f3(m["event_recall"]), f3(m["event_f1"]),
                         f"{fr:.1f}"])
        print(f"\n## SKAB valve1, {len(experiments)} experiments (a device-time flagged when any of its 8 sensors is)\n")
        print(table(["detector", "point F1", "precision", "recall", "event recall", "event F1",
                     "flags per 1,000 device-times, anomaly-free"], rows))
    print(f"\n{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
