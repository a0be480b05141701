"""Scoring the same window with the local process pool and with Ray: run times and identical predictions.

    python bench/ray_vs_local.py [--devices 100] [--sensors 4] [--hours 3] [--workers 2] [--ray-address ADDR]

Simulates a fleet into a fresh home, trains one version (local pool), then scores the last hour
``--repeat`` times with each executor, alternating, and prints one Markdown table: each executor's
run times (the first run of each includes starting its workers) and the Ray/local ratio of the
medians, and checks that both executors wrote the same predictions. Without ``--ray-address`` the
Ray executor joins ``RAY_ADDRESS`` or a local ``ray start`` instance, else starts its own.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from fleetscore.api import Fleet
from fleetscore.core.simulate import simulate_fleet

START = datetime(2026, 1, 1, tzinfo=UTC)
KEY = [("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")]


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def predictions(fleet: Fleet, run_id: str) -> pa.Table:
    return fleet.predictions(run_id=run_id).sort_by(KEY).drop_columns(["run_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--sensors", type=int, default=4)
    parser.add_argument("--hours", type=int, default=3, help="simulated hours; the last one is scored")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-models", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="fleetscore-bench-"))
    try:
        fleet = Fleet.open(home, executor="local", workers=args.workers, shard_models=args.shard_models,
                           ray_address=args.ray_address)
        table = simulate_fleet(args.devices, args.sensors, START, args.hours, 60.0, 0.01, 1)
        fleet.import_table(table.select(["ts", "device", "sensor", "value"]))
        lo, hi = START + timedelta(hours=args.hours - 1), START + timedelta(hours=args.hours)
        version = fleet.train(iso(START), iso(lo)).version
        times: dict[str, list[float]] = {"local": [], "ray": []}
        last: dict[str, pa.Table] = {}
        for _ in range(args.repeat):
            for executor in times:
                run = fleet.score(iso(lo), iso(hi), version=version, executor=executor)
                assert run.status.value == "succeeded", run.error
                times[executor].append(run.elapsed_s or 0.0)
                last[executor] = predictions(fleet, run.run_id)
        same = last["local"].equals(last["ray"])
        print(f"\n{args.devices * args.sensors} models, {last['local'].num_rows:,} readings scored "
              f"({iso(lo)}..{iso(hi)}), {run.tasks} tasks, {args.workers} workers\n")
        print("| executor | run times (s) | median (s) |")
        print("|---|---|---|")
        for executor, values in times.items():
            print(f"| {executor} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} |")
        ratio = statistics.median(times["ray"]) / statistics.median(times["local"])
        print(f"\nray / local (medians): {ratio:.2f}; identical predictions: {same}")
        fleet.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
