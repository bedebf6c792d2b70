"""The whole `mnistlab train fast` as a user times it (interpreter start to exit), with where the time goes.

    python benchmarks/command_time.py [--model fast] [--runs 3] [-- EXTRA TRAIN ARGS]

Each run is a fresh `python -m mnistlab train MODEL` process (new run folder, a throwaway registry). Besides the
wall time to exit, an import hook in that process stamps the moments that make up the command: torch's import
starting, the data read and verified (the background thread), training (metrics.json's train_seconds), the
test pass (eval_seconds), the answer printed (the `registry:` line) and matplotlib's import (curves.png, drawn
in the background after metrics.json). Medians over the runs; the machine and the load average are written
beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine, print_table, write_json

# Runs inside the measured process: stamps (seconds since interpreter start) on stderr, one JSON line each.
PROBE = r"""
import json, sys, threading, time, importlib.abc
T0 = time.perf_counter() - float(sys.argv.pop(1))   # the parent passes how long the interpreter took to get here
def stamp(what):
    print("@@" + json.dumps({"what": what, "t": round(time.perf_counter() - T0, 4)}), file=sys.stderr, flush=True)
import importlib.machinery
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in ("torch", "matplotlib") and name not in seen:
            seen.add(name); stamp(f"import {name} starts ({threading.current_thread().name})")
        if name == "mnistlab.checkpoint" and name not in seen:  # training.py imports it right after torch
            seen.add(name); stamp("torch imported")
        if name == "mnistlab.training" and name not in seen:
            seen.add(name)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            run = spec.loader.exec_module
            def exec_module(module):
                run(module)
                epoch, finish = module._train_epoch, module._finish_network
                def first_epoch(*a, **k):
                    stamp("training starts (model built, data on the device)"); out = epoch(*a, **k)
                    stamp("training ends"); return out
                def test_pass(*a, **k):
                    out = finish(*a, **k); stamp("test pass done"); return out
                module._train_epoch, module._finish_network = first_epoch, test_pass
            spec.loader.exec_module = exec_module
            return spec
        return None
seen = set()
sys.meta_path.insert(0, Hook())
import mnistlab.data as data
import mnistlab.runs as runs
write_metrics = runs.write_json_atomic
def stamped_write(path, *a, **k):
    out = write_metrics(path, *a, **k)
    if str(path).endswith("metrics.json"): stamp("metrics.json written")
    return out
runs.write_json_atomic = stamped_write
load = data.load_dataset
def timed_load(*a, **k):
    stamp("data read starts"); out = load(*a, **k); stamp("data read and verified"); return out
data.load_dataset = timed_load
from mnistlab.cli import main
sys.argv[0] = "mnistlab"
code = main()  # as the console script calls it (argv from sys.argv)
stamp("main returned (summary printed, curves.png joined)")
import atexit
atexit.register(lambda: stamp("exit (threads joined)"))
sys.exit(code)
"""


def one_run(model: str, extra: list[str], tmp: Path, index: int, src: Path) -> dict:
    out, registry = tmp / f"run{index}-{src.parent.name}", tmp / "registry.sqlite"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # The interpreter's own start-up (before the probe's first line), measured separately.
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
    interpreter = time.perf_counter() - started
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, f"{interpreter:.4f}", "train", model, "--out", str(out),
                           "--registry", str(registry), *extra], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the command failed ({done.returncode}): {done.stderr[-2000:]}")
    stamps = {row["what"]: row["t"] for row in (json.loads(line[2:]) for line in done.stderr.splitlines()
                                                  if line.startswith("@@"))}
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_seconds": round(wall, 3), "interpreter_seconds": round(interpreter, 3), "stamps": stamps,
            "train_seconds": metrics["train_seconds"], "eval_seconds": metrics["eval_seconds"],
            "total_seconds_in_fit": metrics.get("total_seconds"), "curves_png": (out / "curves.png").is_file(),
            "test_accuracy": metrics["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare-src", type=Path,
                        help="another checkout's src/ (e.g. main's) timed in the same run, runs interleaved")
    parser.add_argument("extra", nargs="*", help="more `mnistlab train` arguments (after --)")
    args = parser.parse_args()
    info = {**machine(), "load_average_start": os.getloadavg()}
    sources = [ROOT / "src", *([args.compare_src.resolve()] if args.compare_src else [])]
    by_source: dict[Path, list[dict]] = {src: [] for src in sources}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.runs):
            for src in sources:
                by_source[src].append(one_run(args.model, args.extra, Path(tmp), index, src))
                print(f"run {index + 1} ({src}): {by_source[src][-1]['wall_seconds']:.2f} s", flush=True)
    info["load_average_end"] = os.getloadavg()
    results = by_source[ROOT / "src"]
    if args.compare_src:
        other = by_source[sources[1]]
        print(f"\nwall seconds, median: this checkout {statistics.median(r['wall_seconds'] for r in results):.2f}, "
              f"{sources[1]} {statistics.median(r['wall_seconds'] for r in other):.2f}")
    keys = sorted({key for row in results for key in row["stamps"]}, key=lambda k: statistics.median(
        row["stamps"][k] for row in results if k in row["stamps"]))
    table = [[key, f"{statistics.median(row['stamps'][key] for row in results if key in row['stamps']):.2f}"]
             for key in keys]
    for name in ("train_seconds", "eval_seconds", "interpreter_seconds", "wall_seconds"):
        table.append([name.replace("_", " "), f"{statistics.median(row[name] for row in results):.2f}"])
    command = f"python -m mnistlab train {args.model} {' '.join(args.extra)}".strip()
    print(f"\n{command}: median of {args.runs} runs, machine: {info['cpu']} x{info['cores']}, "
          f"load average {info['load_average_start'][0]:.1f} at the start")
    print_table(["moment (seconds since interpreter start) or duration", "median s"], table)
    path = write_json(f"command_time_{args.model}", {"machine": info, "command": command, "runs": results,
                                                     "compared": {str(k): v for k, v in by_source.items()}})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
