"""CLI start time: ``fleetscore [CMD] --help`` against a bare ``python -c pass`` on the same interpreter.

    python bench/cli_start.py [--repeat 7] [--command "score"] [--command "models list"]

Each figure is the best of ``--repeat`` runs of a fresh process (wall clock; output discarded), so
noise from other processes on the machine only ever makes a run slower. The bare start pays what
``site`` loads (``.pth`` files of installed packages) exactly as the CLI does. Bytecode is written to a
temporary ``PYTHONPYCACHEPREFIX`` (even under ``PYTHONDONTWRITEBYTECODE``), so the runs after the first
time what an installed CLI pays rather than compiling every module again. Reports each command's
time, its ratio to the bare start and its cost above it (issue 17's target: within 10x bare + 100 ms),
and the import time of ``fleetscore.cli.main`` from ``python -X importtime``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

#: What the ``fleetscore`` console script runs; ``-c`` keeps the measurement off PATH shims.
ENTRY = "import sys; from fleetscore.cli.main import main; sys.exit(main())"


def best_of(argv: list[str], repeat: int, env: dict[str, str]) -> float:
    """Fastest wall time of ``repeat`` fresh runs of ``argv`` (seconds); fails if a run fails."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
        best = min(best, time.perf_counter() - t0)
    return best


def import_ms(module: str, env: dict[str, str]) -> float:
    """Cumulative import time of ``module`` (ms) as ``python -X importtime`` reports it."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, check=True, env=env).stderr
    [line] = [ln for ln in err.splitlines() if re.search(rf"\|\s*{re.escape(module)}$", ln)]
    return int(line.split("|")[1]) / 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="runs per figure; the best counts")
    ap.add_argument("--command", action="append", help="subcommand whose --help to time (repeatable)")
    args = ap.parse_args(argv)
    commands = [""] + (args.command or ["score", "models", "models list"])
    with tempfile.TemporaryDirectory() as pycache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPYCACHEPREFIX": pycache}
        bare = best_of([sys.executable, "-c", "pass"], args.repeat, env)
        help_s = {c: best_of([sys.executable, "-c", ENTRY, *c.split(), "--help"], args.repeat, env) for c in commands}
        cli_ms = import_ms("fleetscore.cli.main", env)
    report: dict[str, object] = {"python": sys.version.split()[0], "bare_start_s": round(bare, 4),
                                 "import_cli_ms": round(cli_ms, 1)}
    for command, t in help_s.items():
        report[f"fleetscore {command} --help".replace("  ", " ")] = {
            "s": round(t, 4), "x_bare": round(t / bare, 2), "above_bare_ms": round((t - bare) * 1000, 1),
            "within_target": t <= 10 * bare + 0.1}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
