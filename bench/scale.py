"""Simulate → train → score at fleet scale: time, models/s, rows/s and peak memory for each size.

    python bench/scale.py [--sizes 10000,100000,1000000] [--sensors 4] [--workers CORES] [--keep DIR] [--defaults]

For each size (models = (device, sensor) pairs, 60 minute readings each per hour) a fresh home is
filled in three phases, each its own process tree, as a user would run them:

* land: simulate two hours of readings and land them chunk by chunk (``ReadingStore.land``);
* train: ``fleetscore train`` on the first hour (ocsvm, raw, nu 0.05, gamma "scale", all workers; with
  ``--defaults`` nothing is pinned: the default kind, calibrated to the default alarm rate);
* score: ``fleetscore score`` of the second hour (all workers); its ``elapsed_s`` is the run's own time,
  incident building included (reported apart: the share it adds to the rest of the run).

Peak memory is sampled every 0.1 s over the phase's whole process tree (CLI, fork server, workers):
the sum of RSS (counts pages shared between forked workers once per process: an upper bound) and
the sum of PSS (shares them out: what the tree really holds). Training throughput is compared with
``cores ×`` the single-core rate of a plain scikit-learn loop (``make_pipeline(StandardScaler(),
OneClassSVM()).fit``) measured in the same run on the same kind of data. 1,000,000 models take
several minutes (most of it training); ``--sizes`` picks what to run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fleetbench import MODEL, SCORE, START, TRAIN, iso, land_fleet, machine, markdown

PAGE = os.sysconf("SC_PAGE_SIZE")
CLI = [sys.executable, "-c", "from fleetscore.cli.main import main; main()"]


@dataclass
class Phase:
    seconds: float
    peak_rss: int
    peak_pss: int
    result: dict


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return found


def memory(pids: list[int]) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over ``pids``; processes that ended meanwhile count 0."""
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as fh:
                rss += int(fh.read().split()[1]) * PAGE
            with open(f"/proc/{p}/smaps_rollup") as fh:
                pss += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
    return rss, pss


def run_phase(cmd: list[str]) -> Phase:
    """Run ``cmd`` (prints one JSON object), sampling its process tree's memory every 0.1 s."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            rss, pss = memory(tree(proc.pid))
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed ({proc.returncode}):\n{err[-3000:]}")
    return Phase(seconds, peak[0], peak[1], json.loads(out.strip().splitlines()[-1]))


def sklearn_fit_rate(sensors: int, models: int = 400) -> float:
    """Models per second of a plain scikit-learn fit loop on one core, on simulated hours like the fleet's."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    from fleetscore.core.plan import group_bounds
    from fleetscore.core.simulate import simulate_fleet

    table = simulate_fleet(max(1, models // sensors), sensors, START, 1, 60.0, 0.01, 1)
    bounds = group_bounds(table.column("device"), table.column("sensor"))
    values = table.column("value").to_numpy().reshape(-1, 1)
    groups = [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    make_pipeline(StandardScaler(), OneClassSVM(kernel="rbf", nu=MODEL["nu"], gamma=MODEL["gamma"])).fit(groups[0])
    started = time.perf_counter()
    for x in groups:
        make_pipeline(StandardScaler(), OneClassSVM(kernel="rbf", nu=MODEL["nu"], gamma=MODEL["gamma"])).fit(x)
    return len(groups) / (time.perf_counter() - started)


def mb(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated model counts")
    parser.add_argument("--sensors", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", type=Path, default=None, help="keep each size's home under this folder")
    parser.add_argument("--defaults", action="store_true",
                        help="train with the defaults (nothing pinned) instead of ocsvm nu 0.05")
    parser.add_argument("--phase", choices=["land"], help=argparse.SUPPRESS)  # internal: one phase, in its own process
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "land":
        from fleetscore.config import load_config

        landed = land_fleet(load_config(args.home).storage.url, args.models, args.sensors)
        print(json.dumps({"rows": landed.rows, "elapsed_s": round(landed.seconds, 3)}))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    base = args.keep or Path(tempfile.mkdtemp(prefix="fleetscore-bench-scale-"))
    rate = sklearn_fit_rate(args.sensors)
    pinned = [] if args.defaults else ["--kind", MODEL["kind"], "--features", MODEL["features"],
                                       "--nu", str(MODEL["nu"]), "--gamma", MODEL["gamma"]]
    rows_out: list[list[str]] = []
    summary: dict[int, dict[str, Phase]] = {}
    try:
        for size in sizes:
            home = base / f"models-{size}"
            shutil.rmtree(home, ignore_errors=True)
            where = ["--home", str(home), "--json"]
            phases = {
                "land": run_phase([sys.executable, __file__, "--phase", "land", "--home", str(home),
                                   "--models", str(size), "--sensors", str(args.sensors)]),
                "train": run_phase(CLI + ["train", "--from", iso(TRAIN[0]), "--to", iso(TRAIN[1]),
                                          "--workers", str(args.workers), *pinned, *where]),
                "score": run_phase(CLI + ["score", "--from", iso(SCORE[0]), "--to", iso(SCORE[1]),
                                          "--workers", str(args.workers), *where]),
            }
            summary[size] = phases
            models = phases["train"].result["models"]
            for name, ph in phases.items():
                own = ph.result["elapsed_s"]
                rows = ph.result["rows"] if name != "train" else models * 60
                rows_out.append([f"{size:,}", name, f"{own:,.1f}", f"{ph.seconds:,.1f}",
                                 f"{models / own:,.0f}", f"{rows / own:,.0f}", mb(ph.peak_rss), mb(ph.peak_pss)])
            if args.keep is None:
                shutil.rmtree(home, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)

    print(f"## bench/scale.py: {', '.join(f'{s:,}' for s in sizes)} models × 60 readings per hour, "
          f"{args.workers} workers, {'default models' if args.defaults else 'ocsvm nu 0.05'}\n")
    print(machine() + "\n")
    print(markdown(["models", "phase", "time (s)", "with process start (s)", "models/s", "rows/s",
                    "peak RSS, sum (MB)", "peak PSS, sum (MB)"], rows_out))
    print(f"\nsingle-core scikit-learn fit loop: {rate:,.0f} models/s; × {args.workers} cores = "
          f"{rate * args.workers:,.0f} models/s")
    notes = []
    for size, ph in summary.items():
        train_rate = ph["train"].result["models"] / ph["train"].result["elapsed_s"]
        notes.append(f"training at {size:,}: {train_rate:,.0f} models/s = "
                     f"{train_rate / (rate * args.workers):.0%} of cores × single-core scikit-learn")
    for size, ph in summary.items():  # incidents are built inside the run, after its window commits
        run = ph["score"].result
        built = run.get("extra", {}).get("incidents", {})
        if "elapsed_s" in built:
            notes.append(f"incident building at {size:,}: {built['elapsed_s']:.2f} s of the run's {run['elapsed_s']:.1f} s "
                         f"= {built['elapsed_s'] / (run['elapsed_s'] - built['elapsed_s']):.1%} added "
                         f"({run['anomalies']:,} flags; target ≤ 10% at 100,000)")
    small, large = min(summary), max(summary)
    score_l = summary[large]["score"]
    notes.append(f"scoring {large:,} models: {score_l.result['elapsed_s']:.1f} s (target ≤ 60 s at 1,000,000 on 2 cores), "
                 f"peak RSS {mb(score_l.peak_rss)} MB (target ≤ 2048), "
                 f"RSS {large:,} / {small:,} = {score_l.peak_rss / summary[small]['score'].peak_rss:.2f} (target ≤ 1.5), "
                 f"PSS ratio {score_l.peak_pss / summary[small]['score'].peak_pss:.2f}")
    print("\n" + "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
