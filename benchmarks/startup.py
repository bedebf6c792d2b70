"""Start-up latency of the CLI: ``mnistlab --help`` (must not import torch) and ``mnistlab data info``.

    python benchmarks/startup.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import shutil
import sys

from _common import isolate_registry, machine, print_table, run_timed, summary, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    isolate_registry()
    exe = shutil.which("mnistlab") or ""
    commands = {
        "mnistlab --help": [exe, "--help"] if exe else [sys.executable, "-m", "mnistlab", "--help"],
        "mnistlab data info": [exe, "data", "info"] if exe else [sys.executable, "-m", "mnistlab", "data", "info"],
        "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch"],
        "python -c 'pass' (reference)": [sys.executable, "-c", "pass"],
    }
    results = {"machine": machine(), "commands": {}}
    rows = []
    for label, argv in commands.items():
        walls = []
        for _ in range(args.repeats):
            wall, done = run_timed(argv)
            if done.returncode != 0:
                raise SystemExit(f"{label} failed: {done.stderr}")
            walls.append(wall)
        stats = summary(walls)
        results["commands"][label] = stats
        rows.append([label, f"{stats['median']:.3f}", f"{stats['min']:.3f}", f"{stats['max']:.3f}"])
    print(f"start-up, {args.repeats} runs each, machine: {results['machine']['cpu']} x{results['machine']['cores']}")
    print_table(["command", "median s", "min s", "max s"], rows)
    print(f"\nwrote {write_json('startup', results)}")


if __name__ == "__main__":
    main()
