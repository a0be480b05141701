"""The Ray executor's driver overhead per task at thousands of tasks, beside plain Ray in the same run.

    python bench/ray_dispatch.py [--tasks 5000] [--workers 2] [--ray-address ADDR] [--repeat 2]

Maps a task that does nothing (``noop``) over ``--tasks`` specs, once through ``RayExecutor.map`` (what a
run does: one Ray task per shard, results taken as they finish) and once as the plain Ray baseline
(``ray.get`` of all ``f.remote()`` at once), and prints per task the driver's CPU time (what dispatch
costs the driver: the issue's target is ≤ 5 ms at 5,000 tasks) and the wall time. Without
``--ray-address`` a local Ray instance of ``--workers`` CPUs is started (a direct connection, as a
driver inside the cluster has); ``ray://HOST:10001`` measures the Ray Client path.
"""

from __future__ import annotations

import argparse
import time

from fleetbench import machine, markdown


def noop(x: int) -> int:
    """The task: nothing to compute, so what is measured is dispatch."""
    return abs(x)


def _timed(run: object) -> tuple[float, float]:
    """(driver CPU seconds, wall seconds) of ``run()``."""
    c0, t0 = time.process_time(), time.perf_counter()
    run()  # type: ignore[operator]
    return time.process_time() - c0, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import ray

    from fleetscore.exec.ray import RayExecutor

    executor = RayExecutor(args.workers, address=args.ray_address)
    specs = list(range(-args.tasks, 0))
    list(executor.map(noop, specs[:50]))  # connect and start the workers before timing
    plain = ray.remote(num_cpus=1)(noop)
    ray.get([plain.remote(x) for x in specs[:50]])

    def through_executor() -> None:
        results = dict(executor.map(noop, specs))
        assert len(results) == len(specs) and all(isinstance(v, int) for v in results.values())

    def plain_ray() -> None:
        assert len(ray.get([plain.remote(x) for x in specs])) == len(specs)

    rows = []
    for _ in range(args.repeat):
        for name, run in (("RayExecutor.map", through_executor), ("plain ray.get", plain_ray)):
            cpu, wall = _timed(run)
            rows.append([name, f"{args.tasks:,}", f"{cpu / args.tasks * 1e3:.2f} ms", f"{wall / args.tasks * 1e3:.2f} ms"])
    where = args.ray_address or f"a local Ray of {args.workers} CPUs (direct)"
    print(f"\n{machine()}\nRay at {where}\n")
    print(markdown(["dispatch", "tasks", "driver CPU per task", "wall per task"], rows))
    executor.close()


if __name__ == "__main__":
    main()
