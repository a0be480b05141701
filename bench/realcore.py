"""Real labelled data through the core functions the pipeline calls (no home): fast enough to iterate on.

    python bench/realcore.py [--datasets PATH] [--only CATEGORY[,...]] [--skip nab-score,skab] [--detail]

The protocol of ``bench/realdata.py`` (same loaders, metrics and baselines), but fleetscore's
defaults run in-process: features built over the whole series (as interval-aware scoring sees them:
every scored reading with its full history), the default kind fitted on the training rows,
``score_bundle`` / ``severity_bundle`` on the rest. It agrees with ``bench/realdata.py`` up to the
first readings after the cut (which the pipeline's fixed look-back may see with less history) and
runs the whole corpus in well under a minute. ``--loco`` adds the leave-one-category-out check
of the knobs in `KNOBS`.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata as rd
from fleetscore.core.features import build_features, day_phase, parse_features
from fleetscore.core.fitting import FitSettings, fit_shard
from fleetscore.core.kinds import score_bundle, severity_bundle
from fleetscore.services.tuning import resolve


def fleet_series(s: rd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(flags, severity / 100) of the defaults on every row of ``s`` (0 / NaN in the training part)."""
    choice = resolve(None, None, None, None, None)
    spec = parse_features(choice.features)
    keep = np.r_[True, s.ts[1:] != s.ts[:-1]]  # the store keeps the first of repeated timestamps
    n = int(keep.sum())
    table = pa.table({"ts": pa.array(s.ts[keep].astype("int64")).cast(pa.timestamp("us", tz="UTC")),
                      "device": ["d"] * n, "sensor": ["s"] * n, "value": s.value[keep]})
    meta, X = build_features(table, spec)
    phase = day_phase(meta.column("ts"))
    n_train = int(keep[: s.train_rows].sum())
    fit = fit_shard([X[:n_train]], FitSettings(choice.kind, choice.nu, choice.gamma, choice.alarm_rate,
                                               choice.min_history, heavy_tails=spec.heavy_tailed,
                                               short_history=spec.short_history, seasonal=spec.seasonal,
                                               values=spec.n_features, side=spec.one_sided,
                                               gated=spec.gated, capped=spec.capped), [phase[:n_train]])
    kinds = [fit.kinds[0]] * n
    slots = np.full(n, fit.slots[0], dtype=np.int64)
    flags = score_bundle(fit.bundle, kinds, slots, X, phase) < 0
    sev = severity_bundle(fit.bundle, kinds, slots, X, phase) / 100.0
    reps = np.diff(np.r_[np.flatnonzero(keep), len(s.ts)])
    flags, sev = np.repeat(flags, reps), np.repeat(sev, reps)
    flags[: s.train_rows] = False
    sev[: s.train_rows] = 0.0
    return flags, sev


def run_fleet(series: list[rd.Series], out: dict[str, rd.Scored], det: str = "fleetscore") -> None:
    for s in series:
        flags, sev = fleet_series(s)
        scored = out.setdefault(rd.series_id(s), rd.Scored())
        scored.flags[det], scored.scores[det] = flags, sev


def nab_table(series: list[rd.Series], results: dict[str, rd.Scored], det: str) -> dict[str, float]:
    """Mean F1 per category (and ``all``), and ``no_anomaly`` flags per 1,000 readings, of one detector."""
    per: dict[str, list[float]] = defaultdict(list)
    flags = rows = 0
    for s in series:
        f = results[rd.series_id(s)].flags[det]
        if s.category == rd.NO_ANOMALY:
            flags += int(f[s.train_rows:].sum())
            rows += len(s.ts) - s.train_rows
        elif s.windows:
            per[s.category].append(rd.nab_f1(s, f)[0])
    out = {c: float(np.mean(v)) for c, v in sorted(per.items())}
    out["all"] = float(np.mean([x for v in per.values() for x in v]))
    out["no_anomaly"] = 1000.0 * flags / max(rows, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=rd.DEFAULT_DATASETS)
    ap.add_argument("--only", default="")
    ap.add_argument("--skip", default="")
    ap.add_argument("--detail", action="store_true")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    only = {c for c in args.only.split(",") if c}
    skip = {c for c in args.skip.split(",") if c}
    cats = only - {"skab"} or (set() if only else set(rd.NAB_CATEGORIES))
    started = time.perf_counter()
    dets = ["ocsvm", "zscore", "fleetscore"]
    if cats:
        series = rd.load_nab(args.datasets / "nab", rd.TRAIN_SHARE, cats)
        results: dict[str, rd.Scored] = {}
        rd.baselines(series, results)
        run_fleet(series, results)
        print("\n## NAB, F1 protocol (core, full history)\n")
        print(rd.report_nab(series, results, dets))
        if args.detail:
            print()
            print(rd.series_detail(series, results, dets))
        if "nab-score" not in skip:
            probation = rd.load_nab(args.datasets / "nab", None, cats)
            nab_results = dict(results)
            redo = [p for p, s in zip(probation, series) if p.train_rows != s.train_rows]
            for p in redo:
                nab_results.pop(rd.series_id(p))
            rd.baselines(redo, nab_results)
            run_fleet(redo, nab_results)
            scores = rd.nab_scores(probation, nab_results, dets, args.datasets / "nab" / "label_windows.json")
            rows = [[d, f"{v['decision']:.1f}", f"{v['swept']:.1f}" if "swept" in v else "–"] for d, v in scores.items()]
            print(f"\n## NAB score, standard profile, {len(probation)} series\n")
            print(rd.table(["detector", "decision", "swept"], rows))
    if "skab" not in skip and (not only or "skab" in only):
        skab = args.datasets / "skab"
        files = sorted((skab / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
        experiments = [rd.load_skab(p, f"valve1-{p.stem}") for p in files]
        free = [rd.load_skab(p, "anomaly-free") for p in sorted((skab / "anomaly-free").glob("*.csv"))]
        results = {}
        flat = [s for e in experiments + free for s in e]
        rd.baselines(flat, results)
        run_fleet(flat, results)
        rows = []
        for d in dets:
            m = rd.skab_metrics(experiments, results, d)
            fr = rd.skab_metrics(free, results, d)["per_1000"]
            rows.append([d, *(rd.f3(m[k]) for k in ("f1", "precision", "recall", "event_recall", "event_f1")),
                         f"{fr:.1f}"])
        print("\n## SKAB valve1 (per-sensor models)\n")
        print(rd.table(["detector", "point F1", "precision", "recall", "event recall", "event F1",
                        "flags/1000 anomaly-free"], rows))
    print(f"\n{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
