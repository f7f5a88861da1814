"""Start-up time of the command line and of the package imports, against the bare interpreter.

Each command runs in a fresh interpreter (``sys.executable``), ``--repeats`` times, the commands taking turns so that
machine noise hits them alike; the figure of merit is the median wall time and its ratio to ``python -c pass`` (the
floor no Python command can go under). The goal: ``concept-erase --help`` costs at most 0.5 s, so it must load no
torch, scikit-learn or diffusers (the command handlers import the library when they run).

    python scripts/bench_startup.py --output bench_results/startup.json

Run it from a checkout (it starts ``python -m pipelines.cli``), on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "concept-erase --help": ["-m", "pipelines.cli", "--help"],
    "concept-erase erase --help": ["-m", "pipelines.cli", "erase", "--help"],
    "import concept_erase": ["-c", "import concept_erase"],
    "import concept_erase.core.registry": ["-c", "import concept_erase.core.registry"],
    "concept-erase list (loads every method)": ["-m", "pipelines.cli", "list"],
}
GOAL_HELP_SECONDS = 0.5


def _time(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(repeats: int) -> dict[str, list[float]]:
    """Wall times per command: ``repeats`` rounds, each round running every command once."""
    for args in COMMANDS.values():  # warm the file cache: the first start of a command reads its files from disk
        _time(args)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, args in COMMANDS.items():
            times[name].append(_time(args))
    return times


def summarise(times: dict[str, list[float]]) -> dict:
    floor = statistics.median(times["python -c pass"])
    rows = {
        name: {
            "median_s": round(statistics.median(values), 4),
            "min_s": round(min(values), 4),
            "over_bare_python": round(statistics.median(values) / floor, 2),
        }
        for name, values in times.items()
    }
    help_s = rows["concept-erase --help"]["median_s"]
    goal = {"goal": f"concept-erase --help <= {GOAL_HELP_SECONDS} s", "value_s": help_s}
    return {"commands": rows, "goals": [{**goal, "passed": help_s <= GOAL_HELP_SECONDS}]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="rounds of every command (default 10)")
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here (default: print it)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    result = summarise(measure(args.repeats))
    result["machine"] = {"python": platform.python_version(), "platform": platform.platform(), "repeats": args.repeats}
    text = json.dumps(result, indent=2)
    if args.output is None:
        print(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
        for name, row in result["commands"].items():
            print(f"{name:<42} {row['median_s']:.3f} s  ({row['over_bare_python']:.1f}x bare python)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
