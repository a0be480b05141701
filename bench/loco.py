"""Leave-one-category-out check of the robust kind's knobs on NAB (core protocol of ``bench/realcore.py``).

    python bench/loco.py [--datasets PATH]

Each knob of `KNOBS` is varied alone (the others at their defaults). For every labelled NAB category,
the value that maximises the mean F1 over the *other* categories is chosen, and the held-out
category's F1 under that choice is printed beside its F1 with the defaults: a knob tuned to the
corpus would move when one category leaves it, and the held-out figure would fall.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realcore
import realdata as rd
from fleetscore.core import robust

KNOBS = {"ENVELOPE_EPISODES": (2, 3, 5), "ENVELOPE_MIN": (1.5, 2.0, 3.0), "CAP": (1.5, 2.0, 3.0), "GATE": (3, 5, 10)}


def per_series(series: list[rd.Series]) -> dict[str, tuple[str, float]]:
    results: dict[str, rd.Scored] = {}
    realcore.run_fleet(series, results)
    return {s.key: (s.category, rd.nab_f1(s, results[rd.series_id(s)].flags["fleetscore"])[0])
            for s in series if s.windows and s.category != rd.NO_ANOMALY}


def mean(f1: dict[str, tuple[str, float]], keep: callable) -> float:
    return float(np.mean([v for c, v in f1.values() if keep(c)]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=rd.DEFAULT_DATASETS)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    series = rd.load_nab(args.datasets / "nab", rd.TRAIN_SHARE, None)
    cats = sorted({s.category for s in series if s.windows and s.category != rd.NO_ANOMALY})
    default = per_series(series)
    rows = []
    for knob, values in KNOBS.items():
        base = getattr(robust, knob)
        runs = {}
        for v in values:
            setattr(robust, knob, v)
            runs[v] = default if v == base else per_series(series)
        setattr(robust, knob, base)
        for cat in cats:
            chosen = max(values, key=lambda v, cat=cat: mean(runs[v], lambda c, cat=cat: c != cat))
            rows.append([knob, cat, base, chosen, rd.f3(mean(default, lambda c, cat=cat: c == cat)),
                         rd.f3(mean(runs[chosen], lambda c, cat=cat: c == cat))])
        rows.append([knob, "all (mean F1 per value)", base, "",
                     " / ".join(f"{v}: {mean(runs[v], lambda c: True):.3f}" for v in values), ""])
    print(rd.table(["knob", "held-out category", "default", "chosen without it", "held-out F1, default",
                    "held-out F1, chosen"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
