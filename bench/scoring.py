"""Per-model cost of scoring: fleetscore vs the scikit-learn loop vs the floor, at 1 worker and all cores.

    python bench/scoring.py [--models 20000] [--sensors 4] [--sample 300] [--repeat 3] [--workers CORES]

Simulates ``--models`` (device, sensor) series (minute readings: 60 per model and hour) into a
fresh home, trains one ``ocsvm`` version (StandardScaler + OneClassSVM, nu 0.05, gamma "scale")
on the first hour and scores the second. Every figure is measured in the same run:

* scikit-learn loop: the classic one-job-per-model design at its best, one joblib file per model,
  ``joblib.load`` + ``pipeline.predict`` of the model's 60 rows in a loop over ``--sample`` models
  (data already in memory), per model;
* fleetscore: a whole scoring run (``Fleet.score``: plan, read, score, write, commit; the run's own
  ``elapsed_s``), best of ``--repeat``, divided by the models, at 1 worker and at ``--workers``;
* floor, what no implementation can avoid: the exp-bound (numpy ``exp``, warm, over as many values
  as the run's kernel evaluations: rows × support vectors) + reading the window's readings from
  Parquet + writing as many prediction rows (same columns and writer); at N workers, floor / N;
* kernel alone (``ocsvm.decision_function`` on the window's rows, grouped by model as a task
  passes them, and shuffled) against the exp-bound;
* the default kind: a second version trained with nothing pinned (``robust`` on ``context``
  features, calibrated; the simulator's sensors are independent, so ``auto`` fits no device model)
  on the same hour, its whole scoring run of the same window per model (best of ``--repeat``, 1
  worker), and the part of it spent reading the readings (with the history before the window
  that its features need: the interval-aware look-back).

The 1-worker figures run with Arrow limited to one thread, so one worker means one core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleetbench import MODEL, SCORE, TRAIN, iso, land_fleet, machine, markdown, us
from fleetscore.api import Fleet
from fleetscore.core import ocsvm
from fleetscore.core.matching import match_runs
from fleetscore.core.times import parse_time
from fleetscore.services.runs import score_window
from fleetscore.storage import layout
from fleetscore.storage.fs import HOT_WRITE, Storage
from fleetscore.storage.models import ModelStore
from fleetscore.storage.readings import ReadingStore


def best(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of ``repeat`` timed calls (after the first call warmed caches, imports and the JIT)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sklearn_loop(train: pa.Table, score: pa.Table, keys: list[tuple[str, str]], folder: Path) -> tuple[float, float]:
    """Seconds per model of ``joblib.load`` + ``predict`` over one file per model (fitted here, as the
    classic design's training job would have), and of the fit alone (one core, the training target's unit)."""
    import joblib
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    def rows(table: pa.Table) -> list[np.ndarray]:
        """Each sampled key's values (a key's rows are contiguous: landed hours come sorted by key)."""
        wanted = pa.table({"device": [k[0] for k in keys], "sensor": [k[1] for k in keys]})
        bounds, run_key = match_runs(table.column("device"), table.column("sensor"), wanted)
        values = table.column("value").to_numpy()
        found = {int(k): (a, b) for k, a, b in zip(run_key, bounds[:-1], bounds[1:]) if k >= 0}
        return [values[found[i][0]:found[i][1]].reshape(-1, 1) for i in range(len(keys))]

    data, fitting = [], 0.0
    for i, (x_train, x_score) in enumerate(zip(rows(train), rows(score))):
        pipe = make_pipeline(StandardScaler(), OneClassSVM(kernel="rbf", nu=MODEL["nu"], gamma=MODEL["gamma"]))
        started = time.perf_counter()
        pipe.fit(x_train)
        fitting += time.perf_counter() - started
        path = folder / f"model-{i:05d}.joblib"
        joblib.dump(pipe, path)
        data.append((path, x_score))

    def loop() -> None:
        for path, x in data:
            joblib.load(path).predict(x)

    return best(loop, 1) / len(keys), fitting / len(keys)


def kernel_inputs(fleet: Fleet, version: str, score: pa.Table) -> tuple[ocsvm.OcsvmParams, np.ndarray, np.ndarray]:
    """All models of the version as one array set, and the window's rows with their model, in key order."""
    manifest = fleet.models(version)
    store = ModelStore(fleet.storage)
    shards = sorted(set(manifest.column("shard").to_pylist()))
    parts = [store.read_shard(version, s) for s in shards]
    offset = dict(zip(shards, np.cumsum([0] + [p.n_models for p in parts[:-1]])))
    slot = manifest.column("slot").to_numpy()
    model_of = np.where(slot >= 0, np.array([offset[s] for s in manifest.column("shard").to_pylist()]) + slot, -1)
    bounds, run_model = match_runs(score.column("device"), score.column("sensor"), manifest)
    idx = np.repeat(np.where(run_model >= 0, model_of[np.maximum(run_model, 0)], -1), np.diff(bounds))
    keep = idx >= 0
    return ocsvm.OcsvmParams.concat(parts), idx[keep], score.column("value").to_numpy()[keep].reshape(-1, 1)


@dataclass(frozen=True)
class Fixed:
    """One scoring run of the window, split: the command's wall (cold CLI only), the run's ``elapsed_s``, the
    sum of its task walls, and how the run executed (``extra.execution``)."""

    command_s: float | None
    run_s: float
    tasks_s: float
    mode: str

    @property
    def rest_s(self) -> float:
        return self.run_s - self.tasks_s


def _split(fleet: Fleet, run: Any, command_s: float | None = None) -> Fixed:
    tasks = fleet.run(run.run_id)[1]
    return Fixed(command_s, run.elapsed_s, sum(t.wall_s for t in tasks), run.extra.get("execution", {}).get("mode", "?"))


def cold_command(fleet: Fleet, home: Path, workers: int | None) -> Fixed:
    """``fleetscore score`` in a new process (its own imports, kernel load, catalog, output), as a cron job runs it."""
    script = Path(sys.executable).parent / "fleetscore"  # the installed script itself, not a version manager's shim
    cmd = [str(script) if script.exists() else "fleetscore", "score", "--home", str(home), "--from", iso(SCORE[0]),
           "--to", iso(SCORE[1]), "--json"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as installed: bytecode kept
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    wall = time.perf_counter() - t
    return _split(fleet, fleet.run(json.loads(out)["run_id"])[0], wall)


def warm_runs(fleet: Fleet, workers: int, repeat: int) -> Fixed:
    """The best of ``repeat`` runs after a first one, in this long-lived process with one executor kept between
    runs (as ``fleetscore scheduler`` keeps it)."""
    import fleetscore.exec.warm  # noqa: F401 - what the scheduler loads at its start: the kernel, compiled

    executor = fleet.executor(workers=workers)
    lo, hi = parse_time(SCORE[0]), parse_time(SCORE[1])
    try:
        score_window(fleet.context, executor, lo, hi, fleet.version().version)
        done = [score_window(fleet.context, executor, lo, hi, fleet.version().version) for _ in range(repeat)]
    finally:
        executor.close()
    return min((_split(fleet, r) for r in done), key=lambda f: f.run_s)


def fixed_costs(fleet: Fleet, home: Path, workers: int, repeat: int) -> list[tuple[str, Fixed]]:
    """Cold CLI runs at 1 worker and at ``workers`` (the run chooses how to execute), warm runs at both."""
    def best_cold(n: int) -> Fixed:
        return min((cold_command(fleet, home, n) for _ in range(repeat)), key=lambda f: f.run_s)

    return [("cold CLI, --workers 1", best_cold(1)), (f"cold CLI, --workers {workers}", best_cold(workers)),
            ("warm process, 1 worker", warm_runs(fleet, 1, repeat)),
            (f"warm process, {workers} workers", warm_runs(fleet, workers, repeat))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="20000", help="fleet size, or sizes separated by commas")
    parser.add_argument("--sensors", type=int, default=4)
    parser.add_argument("--sample", type=int, default=300, help="models in the scikit-learn loop")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--home", type=Path, default=None, help="keep the data here (default: a temp dir)")
    parser.add_argument("--fixed-cost", action="store_true",
                        help="also split cold CLI and warm runs into task walls and the rest (fixed cost)")
    args = parser.parse_args()
    sizes = [int(n) for n in str(args.models).split(",")]
    fixed: list[list[str]] = []
    for n_models in sizes:
        home = args.home / str(n_models) if args.home else Path(tempfile.mkdtemp(prefix="fleetscore-bench-scoring-"))
        try:
            fixed += bench_size(args, n_models, home)
        finally:
            if args.home is None:
                shutil.rmtree(home, ignore_errors=True)
    if fixed:
        print("\n### Fixed cost: cold CLI runs (`fleetscore score --json`, a new process) and warm runs (one executor "
              "kept between runs, as the scheduler keeps it)\n")
        print(markdown(["models", "run", "execution", "command wall", "run elapsed_s", "task walls", "rest", "per model"],
                       fixed))


def bench_size(args: argparse.Namespace, n_models: int, home: Path) -> list[list[str]]:
    """The tables of one fleet size; returns its fixed-cost rows (empty without ``--fixed-cost``)."""
    fleet = Fleet.open(home, workers=args.workers)
    landed = land_fleet(fleet.config.storage.url, n_models, args.sensors)
    trained = fleet.train(iso(TRAIN[0]), iso(TRAIN[1]), workers=args.workers, **MODEL)
    models = trained.models
    lo, hi = parse_time(SCORE[0]), parse_time(SCORE[1])
    readings = ReadingStore(fleet.storage)
    score_rows = readings.read_window(lo, hi)
    rows = score_rows.num_rows

    # fleetscore, 1 worker = 1 core (Arrow's own threads off), then all workers
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    fleet.score(iso(SCORE[0]), iso(SCORE[1]), workers=1)  # warm: imports, compiled kernel
    one = [fleet.score(iso(SCORE[0]), iso(SCORE[1]), workers=1) for _ in range(args.repeat)]
    run_1 = min(r.elapsed_s for r in one)

    # the floor's parts, on one core
    params, idx, x = kernel_inputs(fleet, trained.version, score_rows)
    evals = int(params.n_sv[idx].sum())
    kernel = best(lambda: ocsvm.decision_function(params, idx, x), 5)
    perm = np.random.default_rng(0).permutation(len(idx))
    kernel_shuffled = best(lambda: ocsvm.decision_function(params, idx[perm], x[perm]), 5)
    arg = -np.random.default_rng(1).uniform(0.0, 20.0, evals)
    buf = np.empty_like(arg)
    exp_bound = best(lambda: np.exp(arg, out=buf), 5)
    files = [fleet.storage.path(k) for k in fleet.storage.list(layout.hour_key(lo))]
    read = best(lambda: [pq.read_table(f, read_dictionary=["device", "sensor"], use_threads=False) for f in files],
                args.repeat)
    predictions = fleet.predictions(run_id=one[-1].run_id)
    for name in ("model_version", "run_id", "model_kind"):  # the run writes these as dictionaries: so does the floor
        if name in predictions.column_names:
            i = predictions.schema.get_field_index(name)
            predictions = predictions.set_column(i, name, pc.dictionary_encode(predictions.column(i)))
    sink = Storage(str(home / "floor"))
    write = best(lambda: sink.write_parquet("predictions.parquet", predictions, **HOT_WRITE), args.repeat)
    floor = exp_bound + read + write

    sample = predictions.select(["device", "sensor"]).take(
        pa.array(np.linspace(0, predictions.num_rows - 1, min(args.sample, models)).astype(np.int64))).to_pylist()
    keys = list(dict.fromkeys((k["device"], k["sensor"]) for k in sample))
    train_rows = readings.read_window(parse_time(TRAIN[0]), parse_time(TRAIN[1]))
    folder = home / "sklearn-models"
    folder.mkdir()
    sk, sk_fit = sklearn_loop(train_rows, score_rows, keys, folder)

    # the default kind (nothing pinned), same window, 1 worker
    defaults = fleet.train(iso(TRAIN[0]), iso(TRAIN[1]), workers=args.workers, release=False)
    fleet.score(iso(SCORE[0]), iso(SCORE[1]), version=defaults.version, workers=1)
    runs_d = [fleet.score(iso(SCORE[0]), iso(SCORE[1]), version=defaults.version, workers=1)
              for _ in range(args.repeat)]
    best_d = min(runs_d, key=lambda r: r.elapsed_s)
    tasks_d = fleet.run(best_d.run_id)[1]
    read_d = sum(t.load_data_s or 0.0 for t in tasks_d)
    score_d = sum(t.score_s or 0.0 for t in tasks_d)
    kinds_d = sorted(set(fleet.models(defaults.version).column("kind").to_pylist()))

    pa.set_cpu_count(os.cpu_count() or 1)
    pa.set_io_thread_count(max(8, os.cpu_count() or 1))
    fleet.score(iso(SCORE[0]), iso(SCORE[1]), workers=args.workers)
    many = [fleet.score(iso(SCORE[0]), iso(SCORE[1]), workers=args.workers) for _ in range(args.repeat)]
    run_n = min(r.elapsed_s for r in many)
    n = args.workers

    per = {k: v / models for k, v in dict(run_1=run_1, run_n=run_n, floor=floor, kernel=kernel,
                                          shuffled=kernel_shuffled, exp=exp_bound, read=read, write=write).items()}
    print(f"## bench/scoring.py: {models:,} models × 60 readings ({rows:,} rows scored, "
          f"{evals / rows:.2f} support vectors per row on average)\n")
    print(machine() + "\n")
    print(markdown(["measured", "per model", "rows/s", "ratio"], [
        [f"scikit-learn loop: joblib.load + predict, one file per model ({len(keys)} models)", us(sk),
         f"{60 / sk:,.0f}", "1×"],
        ["fleetscore whole run, 1 worker", us(per["run_1"]), f"{rows / run_1:,.0f}",
         f"{sk / per['run_1']:.1f}× faster than scikit-learn; {per['run_1'] / per['floor']:.2f}× the floor"],
        ["floor, 1 core: read + write + exp-bound", us(per["floor"]), f"{rows / floor:,.0f}",
         f"read {us(per['read'])}, write {us(per['write'])}, exp {us(per['exp'])}"],
        [f"fleetscore whole run, {n} workers", us(per["run_n"]), f"{rows / run_n:,.0f}",
         f"{sk / per['run_n']:.1f}× faster than scikit-learn; {per['run_n'] / (per['floor'] / n):.2f}× the floor / {n}"],
        [f"floor / {n}", us(per["floor"] / n), f"{rows * n / floor:,.0f}", ""],
        ["kernel alone, rows grouped by model", us(per["kernel"]), f"{rows / kernel:,.0f}",
         f"{kernel / exp_bound:.2f}× the exp-bound"],
        ["kernel alone, rows shuffled", us(per["shuffled"]), f"{rows / kernel_shuffled:,.0f}",
         f"{kernel_shuffled / exp_bound:.2f}× the exp-bound"],
        [f"exp-bound: numpy exp over {evals:,} values", us(per["exp"]), f"{rows / exp_bound:,.0f}", ""],
        [f"defaults ({defaults.version}: {', '.join(kinds_d)}, {fleet.version(defaults.version).features}), "
         "whole run, 1 worker", us(best_d.elapsed_s / defaults.models), f"{best_d.rows / best_d.elapsed_s:,.0f}",
         f"reading (with history) {us(read_d / defaults.models)}, features + scoring {us(score_d / defaults.models)}"],
    ]))
    fit_share = sk_fit * models / (trained.elapsed_s * args.workers)
    print(f"\nlanded {landed.rows:,} readings in {landed.seconds:.1f} s; trained {models:,} models in "
          f"{trained.elapsed_s:.1f} s ({trained.shards} shards, {args.workers} workers): {fit_share:.0%} of "
          f"{args.workers} × the single-core scikit-learn fit rate ({us(sk_fit)} per fit; target ≥ 90%)")
    print("\ntargets: " + "; ".join([
        f"whole run ≥ 30× faster than the scikit-learn loop at 1 worker: {sk / per['run_1']:.1f}× "
        f"({'met' if sk / per['run_1'] >= 30 else 'not met'})",
        f"within 3× of the floor: {per['run_1'] / per['floor']:.2f}× "
        f"({'met' if per['run_1'] <= 3 * per['floor'] else 'not met'})",
        f"kernel within 2× of the exp-bound: {kernel / exp_bound:.2f}× ({'met' if kernel <= 2 * exp_bound else 'not met'})",
    ]))
    if not args.fixed_cost:
        fleet.close()
        return []
    measured = fixed_costs(fleet, home, args.workers, args.repeat)
    cold, warm = measured[0][1], measured[2][1]
    bound = 3 if models <= 10_000 else 2
    print("\nfixed-cost targets, 1 worker: " + "; ".join([
        f"cold run ≥ 30× faster than the scikit-learn loop: {sk * models / cold.run_s:.1f}×",
        f"whole command ≤ 1.5 s: {cold.command_s:.2f} s ({'met' if (cold.command_s or 0) <= 1.5 else 'not met'})",
        f"warm fixed cost ≤ 50 ms: {warm.rest_s * 1000:.0f} ms ({'met' if warm.rest_s <= 0.05 else 'not met'})",
        f"warm run ≤ {bound}× the floor: {warm.run_s / floor:.2f}× ({'met' if warm.run_s <= bound * floor else 'not met'})",
    ]))
    fleet.close()
    return [[f"{models:,}", label, f.mode, "" if f.command_s is None else f"{f.command_s:.2f} s", f"{f.run_s:.3f} s",
             f"{f.tasks_s:.3f} s", f"{f.rest_s * 1000:.0f} ms", us(f.run_s / models)] for label, f in measured]


if __name__ == "__main__":
    main()
