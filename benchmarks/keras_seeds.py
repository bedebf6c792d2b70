"""The tutorial's own Keras code over seeds: each experiment's figure as a sample, not one number.

Runs ``benchmarks/keras_seed.py --only NAME --seed S`` (tf_keras with the legacy RMSprop, the tutorial's rule and
recipe: 30 epochs, batch 128/200; the SGD baseline's figure is its held-out quarter of train, as in the tutorial and
``mnistlab reproduce``) once per experiment and seed, each in a fresh process so no TensorFlow state carries over,
and records every figure in ``benchmarks/results/keras_seeds.json``:

    python benchmarks/keras_seeds.py --only softmax,mlp,sgd --seeds 0-4
    python benchmarks/keras_seeds.py --only cnn --seeds 0-2        # adds to the same file

The file is rewritten atomically after every run, and runs already in it are skipped, so a stopped study resumes
where it stopped and a second command adds seeds or experiments (``--fresh`` starts over). Only the standard
library is used here; the Keras Python (``--keras-python``, default ``.venv-keras/bin/python``, made by
``make keras-venv``) does the training. ``benchmarks/seed_distributions.py`` compares the result with
``mnistlab reproduce --seeds N``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "keras_seeds.json"
EXPERIMENTS = ("softmax", "mlp", "cnn", "sgd")
# One experiment-seed is at most a CNN's 30 epochs (~4 min here); a run past this is stuck, not slow.
RUN_TIMEOUT_S = 3600


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` (inclusive), ``"0,3,7"`` or a count ``"5"`` (seeds 0..4) as a list of distinct seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            low, high = (int(end) for end in part.split("-", 1))
            if high < low:
                raise SystemExit(f"--seeds {text}: range {part} runs backwards; write LOW-HIGH")
            seeds.extend(range(low, high + 1))
        elif "," in text:
            seeds.append(int(part))
        else:
            seeds.extend(range(int(part)))
    if not seeds or len(set(seeds)) != len(seeds) or len(seeds) > 100:
        raise SystemExit(f"--seeds {text}: give 1 to 100 distinct seeds (e.g. 5, 0-4 or 0,3,7)")
    return seeds


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (what ``lscpu | grep 'Model name'`` prints)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: how shared the cores were while a figure was made."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def keras_versions(python: str) -> dict[str, str]:
    """tensorflow, tf_keras, scikit-learn and numpy as the Keras Python has them."""
    code = ("import json, numpy, sklearn, tensorflow, tf_keras; print(json.dumps({'tensorflow': tensorflow.__version__,"
            " 'tf_keras': tf_keras.__version__, 'sklearn': sklearn.__version__, 'numpy': numpy.__version__}))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise SystemExit(f"--keras-python {python}: cannot import tensorflow/tf_keras/sklearn "
                         f"({done.stderr.strip().splitlines()[-1:]}); run `make keras-venv` first")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON so that a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(payload, indent=2) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per experiment: its seeds, figures, mean and sample standard deviation (None below two seeds)."""
    table: dict[str, dict[str, Any]] = {}
    for name in EXPERIMENTS:
        mine = sorted((r for r in runs if r["experiment"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        accuracies = [r["accuracy"] for r in mine]
        table[name] = {
            "evaluated_on": mine[0]["evaluated_on"], "n": len(mine), "seeds": [r["seed"] for r in mine],
            "accuracies": accuracies, "mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
            "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in mine),
        }
    return table


def run_one(python: str, name: str, seed: int, epochs: int) -> dict[str, Any]:
    """One experiment with one seed in a fresh Keras process; its figure the way the tutorial measured it."""
    argv = [python, str(ROOT / "benchmarks" / "keras_seed.py"), "--only", name, "--seed", str(seed),
            "--epochs", str(epochs), "--optimizer", "legacy"]
    load_before = loadavg()
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    row = result[name]
    return {
        "experiment": name, "seed": seed, "accuracy": row["test_accuracy"],
        "evaluated_on": row.get("evaluated_on", "test set"),
        "official_test_accuracy": row.get("official_test_accuracy", row["test_accuracy"]),
        "train_seconds": row["train_seconds"], "wall_seconds": round(wall, 3),
        "optimizer_class": row.get("optimizer_class"), "keras": result["keras"], "tensorflow": result["tensorflow"],
        "epochs": epochs if name != "sgd" else row.get("n_iter"), "loadavg_before": load_before,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="softmax,mlp,sgd,cnn", help="comma-separated experiments, in run order")
    parser.add_argument("--seeds", default="5", help="a count (5: seeds 0-4), a range 0-4, or a list 0,3,7")
    parser.add_argument("--epochs", type=int, default=30, help="the networks' epochs (the tutorial's 30)")
    parser.add_argument("--keras-python", default=str(ROOT / ".venv-keras" / "bin" / "python"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--fresh", action="store_true", help="discard the runs already in --out")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(unknown)}; choose from {','.join(EXPERIMENTS)}")
    if not 1 <= args.epochs <= 1000:
        raise SystemExit(f"--epochs must be in 1..1000, got {args.epochs}")
    seeds = parse_seeds(args.seeds)
    if not Path(args.keras_python).exists():
        raise SystemExit(f"--keras-python {args.keras_python}: not found; run `make keras-venv` first")

    payload: dict[str, Any] = {}
    if args.out.exists() and not args.fresh:
        payload = json.loads(args.out.read_text())
        if payload.get("epochs") != args.epochs:
            raise SystemExit(f"--out {args.out}: holds {payload.get('epochs')}-epoch runs, not {args.epochs}; "
                             "pass --fresh or another --out")
    runs: list[dict[str, Any]] = payload.get("runs", [])
    commands: list[str] = payload.get("commands", [])
    commands.append(" ".join([Path(sys.executable).name, *sys.argv]))
    payload.update({
        "benchmark": "keras_seeds", "optimizer": "legacy (tf_keras.optimizers.legacy.RMSprop, sqrt(v) + eps)",
        "epochs": args.epochs, "commands": commands, "cpu": cpu_model(), "cores": os.cpu_count(),
        "python": platform.python_version(), "versions": keras_versions(args.keras_python),
    })
    done = {(r["experiment"], r["seed"]) for r in runs}
    failures: list[dict[str, Any]] = payload.get("failures", [])
    for name in names:
        for seed in seeds:
            if (name, seed) in done:
                continue
            try:
                row = run_one(args.keras_python, name, seed, args.epochs)
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as error:
                # One bad run should not lose the others' hours; it is recorded and the study goes on.
                failures.append({"experiment": name, "seed": seed, "error": str(error)[-2000:]})
                print(f"{name} seed {seed}: FAILED ({str(error)[-300:]})", flush=True)
            else:
                runs.append(row)
                print(f"{name} seed {seed}: {row['accuracy']:.4f} ({row['evaluated_on']}), "
                      f"{row['train_seconds']:.1f} s training, load {row['loadavg_before']}", flush=True)
            payload.update({"runs": runs, "failures": failures, "experiments": summarise(runs)})
            write_atomic(args.out, payload)
    for name, row in summarise(runs).items():
        std = "n/a" if row["std"] is None else f"{100 * row['std']:.3f}"
        print(f"{name:8s} n={row['n']}  mean {100 * row['mean']:.3f}%  std {std} pt  ({row['evaluated_on']})")


if __name__ == "__main__":
    main()
