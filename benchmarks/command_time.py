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
import os
if os.environ.get("MNISTLAB_SAMPLE_EVERY"):  # a sampling profiler: every thread's stack, every few ms
    import collections
    seconds_in = collections.Counter()    # (thread, file, function) -> seconds it was on that thread's stack
    thread_seconds = collections.Counter()
    every = float(os.environ["MNISTLAB_SAMPLE_EVERY"])
    stop_sampling = threading.Event()
    def sampler():
        me, last = threading.get_ident(), time.perf_counter()
        while not stop_sampling.wait(every):
            # Each sample stands for the real time since the last one (the wait, plus any wait for the GIL).
            now = time.perf_counter(); gap, last = now - last, now
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                thread, where = names.get(ident, "?"), set()
                while frame is not None:  # inclusive: each (file, function) once per sample
                    code = frame.f_code
                    where.add((code.co_filename.rsplit("site-packages/", 1)[-1].rsplit("src/", 1)[-1], code.co_name))
                    frame = frame.f_back
                for key in where:
                    seconds_in[(thread,) + key] += gap
                thread_seconds[thread] += gap
    sampling = threading.Thread(target=sampler, daemon=True, name="sampler")
    sampling.start()
    def report():
        stop_sampling.set(); sampling.join(1.0)
        rows = [[*key, round(value, 4)] for key, value in seconds_in.most_common(400)]
        print("@@" + json.dumps({"what": "samples", "every": every, "rows": rows,
                                 "threads": {k: round(v, 4) for k, v in thread_seconds.items()}}),
              file=sys.stderr, flush=True)
    import atexit as _atexit
    _atexit.register(report)
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


def one_run(model: str, extra: list[str], tmp: Path, index: int, src: Path, *, profile: bool = False) -> dict:
    out, registry = tmp / f"run{index}-{src.parent.name}", tmp / "registry.sqlite"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if profile:
        env["MNISTLAB_SAMPLE_EVERY"] = str(SAMPLE_EVERY)
    # The interpreter's own start-up (before the probe's first line), measured separately.
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
    interpreter = time.perf_counter() - started
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *(["-X", "importtime"] if profile else []), "-c", PROBE,
                           f"{interpreter:.4f}", "train", model, "--out", str(out),
                           "--registry", str(registry), *extra], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the command failed ({done.returncode}): {done.stderr[-2000:]}")
    rows = [json.loads(line[2:]) for line in done.stderr.splitlines() if line.startswith("@@")]
    stamps = {row["what"]: row["t"] for row in rows if "t" in row}
    metrics = json.loads((out / "metrics.json").read_text())
    if profile:
        sampled = [row for row in rows if row.get("what") == "samples"]
        if not sampled:
            raise SystemExit("the profiled run printed no samples")
        return {"wall_seconds": round(wall, 3), "stamps": stamps, "train_seconds": metrics["train_seconds"],
                "imports": _import_times(done.stderr), "samples": sampled[0]}
    return {"wall_seconds": round(wall, 3), "interpreter_seconds": round(interpreter, 3), "stamps": stamps,
            "train_seconds": metrics["train_seconds"], "eval_seconds": metrics["eval_seconds"],
            "total_seconds_in_fit": metrics.get("total_seconds"), "curves_png": (out / "curves.png").is_file(),
            "test_accuracy": metrics["test_accuracy"]}


SAMPLE_EVERY = 0.005  # seconds between the sampler's looks at every thread's stack


# Modules whose own cumulative import time is reported wherever they were imported from.
NAMED_MODULES = ("torch", "numpy", "matplotlib", "matplotlib.pyplot", "rich", "safetensors", "mnistlab.training")


def _import_times(stderr: str) -> dict[str, dict[str, float]]:
    """``-X importtime``'s report: seconds of cumulative import time by top-level import (made by code that is
    not itself importing: the lazy imports inside functions), and for :data:`NAMED_MODULES` wherever they were
    imported.

    A nested import is indented two spaces per level under its importer (whose cumulative time includes it).
    Imports made by two threads at once share the interpreter's one nesting counter, so a module a background
    thread imports while the main thread is importing may be listed as nested there."""
    top: dict[str, float] = {}
    named: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, raw = line[len("import time:"):].split("|")
        name, seconds = raw.strip(), int(cumulative) / 1e6
        if name in NAMED_MODULES:
            named[name] = named.get(name, 0.0) + seconds
        if raw[1:2] != " ":  # not indented past the one space after the bar: a top-level import
            top[name] = top.get(name, 0.0) + seconds
    return {"top_level": dict(sorted(top.items(), key=lambda item: -item[1])), "named": named}


def _print_profile(profiled: dict) -> None:
    imports = profiled["imports"]["top_level"]
    print(f"\nthe profiled run: wall {profiled['wall_seconds']:.2f} s (slower than the timed ones: -X importtime and "
          f"the sampler), training {profiled['train_seconds']:.2f} s")
    print("imports (-X importtime, cumulative seconds by top-level import, top 10):")
    print_table(["module", "s"], [[name, f"{seconds:.3f}"] for name, seconds in list(imports.items())[:10]])
    print("the named modules, wherever imported: " + ", ".join(
        f"{name} {seconds:.3f} s" for name, seconds in profiled["imports"]["named"].items()))
    samples = profiled["samples"]
    totals = samples["threads"]
    print(f"\nsampled every {samples['every'] * 1e3:.0f} ms: seconds each function was on a thread's stack "
          "(inclusive), top 25")
    table = [[thread, f"{where}:{name}", f"{seconds:.2f}", f"{seconds / totals[thread]:.0%}" if totals.get(thread)
              else "-"] for thread, where, name, seconds in samples["rows"]][:25]
    print_table(["thread", "function", "s", "of the thread"], table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare-src", type=Path,
                        help="another checkout's src/ (e.g. main's) timed in the same run, runs interleaved")
    parser.add_argument("--profile", action="store_true",
                        help="one more run under -X importtime and a sampling profiler (not counted in the medians)")
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
        profiled = one_run(args.model, args.extra, Path(tmp), args.runs, ROOT / "src", profile=True) \
            if args.profile else None
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
    if profiled is not None:
        _print_profile(profiled)
    path = write_json(f"command_time_{args.model}", {"machine": info, "command": command, "runs": results,
                                                     "compared": {str(k): v for k, v in by_source.items()},
                                                     "profile": profiled})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
