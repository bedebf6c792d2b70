"""Accuracy on real handwriting that is not MNIST: the set in benchmarks/handwriting/data (issue 13, item 5).

    python benchmarks/handwriting_accuracy.py RUN [RUN ...]
    python benchmarks/handwriting_accuracy.py --train fast --train fast:light --train fast:strong \\
        --train cnn --train cnn:light --epochs 3 [--seeds 0 1] [--threads 1] [--keep DIR]

Each image goes the way a user's does: the stored raw image (the page's canvas, a font render) is encoded as
a PNG, prepared by ``mnistlab.imaging.prepare_image`` (what ``mnistlab predict``, the server and ``Run.predict``
use), and read by ``mnistlab.load(RUN).predict``. An image that preparation refuses counts as wrong.

Reports, per run: accuracy on the drawn part, the font part (and its ink / photo styles), and all, each with a
standard error sqrt(p(1-p)/n); per-digit accuracy; the most common confusions. Written as
benchmarks/results/handwriting.json and .md (``--name`` changes the stem).

This set never feeds a training or selection decision: the runs are trained with their fixed recipes, and
nothing here picks a model or a setting.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from _common import RESULTS_DIR, ROOT, isolate_registry, machine
from handwriting.make_set import DATA_DIR, FILES, MANIFEST, SUMS, read_part, sha256_file

TOP_CONFUSIONS = 8


def verify_set(directory: Path) -> None:
    """Stop with a clear message when the stored set does not match its SHA256SUMS."""
    sums = directory / SUMS
    if not sums.exists():
        sys.exit(f"{sums}: missing; make the set with benchmarks/handwriting/make_set.py")
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if not (directory / name).exists() or sha256_file(directory / name) != digest:
            sys.exit(f"{directory / name}: does not match {SUMS}; restore it (git checkout) or remake the set")


def load_set(directory: Path) -> dict[str, Any]:
    """The set as PNG bytes per image, labels, part and style names (style: drawn, ink or photo)."""
    from mnistlab.imaging import encode_png

    verify_set(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    pngs: list[bytes] = []
    labels: list[int] = []
    parts: list[str] = []
    styles: list[str] = []
    for part in FILES:
        images, part_labels = read_part(directory, part)  # type: ignore[arg-type]
        pngs += [encode_png(image) for image in images]  # a canvas PNG / an image file, as users send them
        labels += [int(v) for v in part_labels]
        parts += [part] * len(images)
        styles += manifest[part]["items"]["style"] if part == "fonts" else ["drawn"] * len(images)
    return {"pngs": pngs, "labels": np.array(labels), "parts": np.array(parts), "styles": np.array(styles)}


def prepare_all(pngs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 prepared as `mnistlab predict` prepares files, and a mask of the images it refused."""
    from mnistlab.errors import MnistlabError
    from mnistlab.imaging import prepare_image

    prepared = np.zeros((len(pngs), 28, 28), dtype=np.uint8)
    refused = np.zeros(len(pngs), dtype=bool)
    for i, png in enumerate(pngs):
        try:
            prepared[i] = prepare_image(png, name=f"image {i}").pixels
        except MnistlabError:
            refused[i] = True
    return prepared, refused


def rate(correct: np.ndarray) -> dict[str, float]:
    """Accuracy, its standard error sqrt(p(1-p)/n), and n."""
    n = int(correct.size)
    p = float(correct.mean()) if n else math.nan
    return {"accuracy": p, "stderr": math.sqrt(p * (1 - p) / n) if n else math.nan, "n": n}


def score(run_dir: Path, data: dict[str, Any], prepared: np.ndarray, refused: np.ndarray) -> dict[str, Any]:
    """One run's figures on the set (predictions through ``mnistlab.load(run).predict``)."""
    import mnistlab

    run = mnistlab.load(run_dir)
    predicted = np.full(len(prepared), -1)
    ok = ~refused
    started = time.perf_counter()
    predicted[ok] = [p.label for p in run.predict(prepared[ok])]
    seconds = time.perf_counter() - started
    labels = data["labels"]
    correct = predicted == labels
    groups = {"drawn": data["parts"] == "drawn", "fonts": data["parts"] == "fonts",
              "fonts_ink": data["styles"] == "ink", "fonts_photo": data["styles"] == "photo",
              "all": np.ones(len(labels), dtype=bool)}
    confusions = Counter((int(t), int(p)) for t, p in zip(labels[~correct], predicted[~correct], strict=True))
    if run.members:  # an ensemble: described by its members' settings (it was not trained itself)
        configs = [mnistlab.load(member["path"]).config for member in run.members]
        settings = {"model": f"ensemble of {len(configs)} {'/'.join(sorted({c.model for c in configs}))}",
                    "augment": "/".join(sorted({c.augment for c in configs})),
                    "epochs": max(c.epochs for c in configs), "seed": "+".join(str(c.seed) for c in configs)}
    else:
        config = run.config
        settings = {"model": config.model, "augment": config.augment, "epochs": config.epochs, "seed": config.seed}
    return {
        "run": str(run_dir), **settings, "mnist_test_accuracy": run.metrics.get("test_accuracy"),
        **{name: rate(correct[mask]) for name, mask in groups.items()},
        "per_digit": {str(d): rate(correct[labels == d]) for d in range(10)},
        "confusions": [{"true": t, "predicted": p, "count": c} for (t, p), c in confusions.most_common(TOP_CONFUSIONS)],
        "predict_seconds": round(seconds, 3),
        "correct": "".join("1" if c else "0" for c in correct),  # per image, in the set's order (paired tests)
    }


def paired(base: dict[str, Any], other: dict[str, Any], mask: np.ndarray) -> dict[str, float]:
    """``other`` minus ``base`` accuracy on the same images, with the paired standard error.

    The two runs read the same images, so the difference's error comes from the images they disagree on:
    with b = base right & other wrong, c = base wrong & other right, d = (c - b) / n and
    SE = sqrt(b + c - (c - b)^2 / n) / n (the standard error behind McNemar's test).
    """
    a = np.frombuffer(base["correct"].encode(), dtype=np.uint8)[mask] == ord("1")
    o = np.frombuffer(other["correct"].encode(), dtype=np.uint8)[mask] == ord("1")
    n = int(mask.sum())
    b, c = int((a & ~o).sum()), int((~a & o).sum())
    return {"difference": (c - b) / n, "stderr": math.sqrt(max(b + c - (c - b) ** 2 / n, 0.0)) / n,
            "base_only": b, "other_only": c, "n": n}


def comparisons(results: list[dict[str, Any]], data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each augmented run against the run of the same model, epochs and seed without augmentation."""
    masks = {"drawn": data["parts"] == "drawn", "fonts": data["parts"] == "fonts",
             "all": np.ones(len(data["labels"]), dtype=bool)}
    out = []
    for other in results:
        base = next((r for r in results if r["augment"] == "none" and other["augment"] != "none" and
                     (r["model"], r["epochs"], r["seed"]) == (other["model"], other["epochs"], other["seed"])), None)
        if base is not None:
            out.append({"model": other["model"], "epochs": other["epochs"], "augment": other["augment"],
                        "seed": other["seed"],
                        **{name: paired(base, other, mask) for name, mask in masks.items()}})
    return out


def train_runs(specs: list[str], *, epochs: int | None, threads: int | None, seeds: list[int], folder: Path
               ) -> list[Path]:
    """Train each ``MODEL[:AUGMENT]`` for each seed with its recipe (``--epochs`` applies to cnn), one at a time."""
    import mnistlab

    runs = []
    for seed in seeds:
        for spec in specs:
            model, _, augment = spec.partition(":")
            augment = augment or "none"
            out = folder / f"{model}-{augment}-seed{seed}"
            print(f"training {model} --augment {augment} --seed {seed} -> {out}", file=sys.stderr)
            started = time.perf_counter()
            mnistlab.train(model, epochs=epochs if model != "fast" else None, augment=augment, threads=threads,
                           seed=seed, device="cpu", run_dir=out, progress="none")
            print(f"  {time.perf_counter() - started:.0f} s", file=sys.stderr)
            runs.append(out)
    return runs


def percent(figure: dict[str, float]) -> str:
    return f"{100 * figure['accuracy']:.1f} ± {100 * figure['stderr']:.1f}"


def markdown(results: list[dict[str, Any]], gains: list[dict[str, Any]], info: dict[str, Any], refused: int,
             total: int, *, where: Path = DATA_DIR) -> str:
    """The report: accuracy table, per-digit table, confusions, machine and command."""
    inside = where.resolve().is_relative_to(ROOT)
    shown = where.resolve().relative_to(ROOT) if inside else where
    lines = ["# Accuracy on real handwriting (not MNIST)", "",
             f"Set: {shown} ({total} images; {refused} refused by preparation, counted wrong). "
             "Figures: accuracy % ± standard error sqrt(p(1-p)/n). Evaluation only: never used for training or "
             "selection.", "",
             "| run | MNIST test | drawn | fonts | fonts ink | fonts photo | all |", "|---|---|---|---|---|---|---|"]
    for r in results:
        label = f"{r['model']} ({r['epochs']} ep) --augment {r['augment']} seed {r['seed']}"
        mnist = f"{100 * r['mnist_test_accuracy']:.2f}" if r["mnist_test_accuracy"] is not None else "-"
        lines.append(f"| {label} | {mnist} | " + " | ".join(percent(r[k]) for k in
                     ("drawn", "fonts", "fonts_ink", "fonts_photo", "all")) + " |")
    settings = {(r["model"], r["epochs"], r["augment"]): [] for r in results}
    for r in results:
        settings[(r["model"], r["epochs"], r["augment"])].append(r["all"]["accuracy"])
    if any(len(v) > 1 for v in settings.values()):
        lines += ["", "Over training seeds (all parts): the spread between seeds is often larger than the set's "
                  "standard error, so compare settings over seeds:", "",
                  "| setting | seeds | mean % | min % | max % |", "|---|---|---|---|---|"]
        for (model, epochs, augment), values in settings.items():
            lines.append(f"| {model} ({epochs} ep) --augment {augment} | {len(values)} | "
                         f"{100 * float(np.mean(values)):.1f} | {100 * min(values):.1f} | {100 * max(values):.1f} |")
    if gains:
        lines += ["", "Gain from augmentation over the same model without it, percentage points ± paired standard "
                  "error (same images; SE from the images the two runs disagree on):", "",
                  "| run | drawn | fonts | all |", "|---|---|---|---|"]
        for g in gains:
            lines.append(f"| {g['model']} ({g['epochs']} ep) --augment {g['augment']} seed {g['seed']} | " + " | ".join(
                f"{100 * g[k]['difference']:+.1f} ± {100 * g[k]['stderr']:.1f}" for k in ("drawn", "fonts", "all"))
                + " |")
    lines += ["", "Per digit (all parts), accuracy %:", "",
              "| run | " + " | ".join(str(d) for d in range(10)) + " |", "|---|" + "---|" * 10]
    for r in results:
        lines.append(f"| {r['model']} --augment {r['augment']} seed {r['seed']} | " +
                     " | ".join(f"{100 * r['per_digit'][str(d)]['accuracy']:.0f}" for d in range(10)) + " |")
    lines += ["", "Most common confusions (true → predicted: count):", ""]
    for r in results:
        pairs = ", ".join(f"{c['true']}→{c['predicted']}: {c['count']}" for c in r["confusions"])
        lines.append(f"- {r['model']} --augment {r['augment']} seed {r['seed']}: {pairs}")
    lines += ["", f"Machine: {info['cpu']}, {info['cores']} cores, load average at start "
              f"{' '.join(info.get('loadavg_at_start', []))}; torch {info['torch']}; {info['date']}.",
              f"Command: `{info['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="run directories to score")
    parser.add_argument("--train", action="append", default=[], metavar="MODEL[:AUGMENT]",
                        help="train this first with its recipe (fast, cnn; augment none|light|strong|robust); "
                             "repeatable")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for trained cnn runs (default: recipe's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for training")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train each --train run for these seeds")
    parser.add_argument("--keep", type=Path, default=None, help="train into this folder (default: a temporary one)")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--name", default="handwriting", help="results file stem (benchmarks/results/NAME.*)")
    args = parser.parse_args()
    if not args.runs and not args.train:
        parser.error("give run directories or --train MODEL[:AUGMENT]")
    isolate_registry()
    info = machine()
    data = load_set(args.data)
    prepared, refused = prepare_all(data["pngs"])
    with tempfile.TemporaryDirectory(prefix="handwriting-runs-") as tmp:
        folder = args.keep or Path(tmp)
        runs = [*args.runs, *train_runs(args.train, epochs=args.epochs, threads=args.threads, seeds=args.seeds,
                                            folder=folder)]
        results = [score(run, data, prepared, refused) for run in runs]
    gains = comparisons(results, data)
    payload = {"machine": info, "set": {"images": len(data["labels"]), "refused": int(refused.sum()),
                                        "refused_indices": np.flatnonzero(refused).tolist()},
               "results": results, "augmentation_gain": gains}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    from mnistlab.runs import write_json_atomic, write_text_atomic

    write_json_atomic(RESULTS_DIR / f"{args.name}.json", payload)
    text = markdown(results, gains, info, int(refused.sum()), len(data["labels"]), where=args.data)
    write_text_atomic(RESULTS_DIR / f"{args.name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
