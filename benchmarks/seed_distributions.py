"""Are mnistlab and the tutorial's own Keras code the same distribution over seeds, experiment by experiment?

Reads ``mnistlab reproduce --seeds N``'s ``seeds.json`` (one or more, e.g. the CNN run apart; copied to
``benchmarks/results/reproduce_seeds.json``) and ``benchmarks/keras_seeds.py``'s ``keras_seeds.json``, and writes
``benchmarks/results/seed_distributions.md`` (and ``.json``): per experiment each side's mean ± sample std (n), the
tutorial's single number, the difference of means in points, in standard errors of the difference (Welch), its 95%
confidence interval, and Welch's t-test p-value (``scipy.stats.ttest_ind(equal_var=False)``):

    python benchmarks/seed_distributions.py [--mnistlab benchmarks/results/reproduce_seeds.json ...]
                                            [--keras benchmarks/results/keras_seeds.json]

Both sides are measured as the tutorial measured: the networks on the official test set, the SGD baseline on its
held-out quarter of the training set. Needs numpy and scipy (mnistlab's venv has both), not mnistlab itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ORDER = ("softmax", "mlp", "cnn", "sgd")


@dataclass(frozen=True)
class Comparison:
    """One experiment: both samples and the Welch statistics of mnistlab's mean minus Keras'."""

    name: str
    evaluated_on: str
    tutorial: float
    mnistlab: tuple[float, ...]
    keras: tuple[float, ...]
    mnistlab_mean: float
    keras_mean: float
    mnistlab_std: float | None
    keras_std: float | None
    difference_points: float          # mnistlab mean - Keras mean, percentage points
    standard_error_points: float | None  # of that difference (Welch: sqrt(s1^2/n1 + s2^2/n2))
    welch_t: float | None             # difference / its standard error
    welch_df: float | None            # Welch-Satterthwaite degrees of freedom
    p_value: float | None             # two-sided Welch t-test, scipy.stats.ttest_ind(equal_var=False)
    ci95_points: tuple[float, float] | None


def welch(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float | None, float | None, float | None,
                                                              float | None, tuple[float, float] | None]:
    """(standard error of mean(a) - mean(b), t, degrees of freedom, two-sided p, 95% CI), all None where a side
    has under two values or both have zero spread (then there is no spread to measure the difference against)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None, None, None, None, None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return None, None, None, None, None
    diff = statistics.fmean(a) - statistics.fmean(b)
    t = diff / se
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    test = stats.ttest_ind(a, b, equal_var=False)
    # The hand-computed t is an independent check that scipy compared the samples we think it did.
    if not math.isclose(float(test.statistic), t, rel_tol=1e-9, abs_tol=1e-12):
        raise AssertionError(f"Welch t by hand {t} differs from scipy's {test.statistic}")
    half = float(stats.t.ppf(0.975, df)) * se
    return se, t, df, float(test.pvalue), (diff - half, diff + half)


def load_mnistlab(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Experiment -> its row from ``seeds.json`` files, an experiment's seeds pooled over the files (a CNN study
    extended by a second ``--seed K --seeds M`` run); a seed twice is refused, it would count one run double."""
    rows: dict[str, dict[str, Any]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        if data.get("quick"):
            raise SystemExit(f"--mnistlab {path}: a --quick run (1 epoch); compare the full recipe")
        for row in data["rows"]:
            pooled = rows.setdefault(row["name"], {**row, "seeds": [], "accuracies": []})
            twice = sorted(set(pooled["seeds"]) & set(row.get("seeds", [])))
            if twice:
                raise SystemExit(f"--mnistlab {path}: {row['name']} seed(s) {twice} are in an earlier file too")
            if row["evaluated_on"] != pooled["evaluated_on"]:
                raise SystemExit(f"--mnistlab {path}: {row['name']} measured on {row['evaluated_on']}, "
                                 f"an earlier file on {pooled['evaluated_on']}")
            pooled["seeds"] = [*pooled["seeds"], *row.get("seeds", [])]
            pooled["accuracies"] = [*pooled["accuracies"], *row["accuracies"]]
    return rows


def compare(mnistlab: dict[str, dict[str, Any]], keras: dict[str, Any]) -> list[Comparison]:
    """One :class:`Comparison` per experiment both sides ran, in the tutorial's order."""
    out = []
    for name in ORDER:
        if name not in mnistlab or name not in keras.get("experiments", {}):
            continue
        ours, theirs = mnistlab[name], keras["experiments"][name]
        if ours["evaluated_on"] != theirs["evaluated_on"]:
            raise SystemExit(f"{name}: mnistlab measured on {ours['evaluated_on']}, Keras on "
                             f"{theirs['evaluated_on']}; they are not comparable")
        a, b = tuple(float(v) for v in ours["accuracies"]), tuple(float(v) for v in theirs["accuracies"])
        se, t, df, p, ci = welch(a, b)
        out.append(Comparison(
            name=name, evaluated_on=ours["evaluated_on"], tutorial=float(ours["seed_accuracy"]), mnistlab=a,
            keras=b, mnistlab_mean=statistics.fmean(a), keras_mean=statistics.fmean(b),
            mnistlab_std=statistics.stdev(a) if len(a) > 1 else None,
            keras_std=statistics.stdev(b) if len(b) > 1 else None,
            difference_points=100 * (statistics.fmean(a) - statistics.fmean(b)),
            standard_error_points=None if se is None else 100 * se, welch_t=t, welch_df=df, p_value=p,
            ci95_points=None if ci is None else (100 * ci[0], 100 * ci[1]),
        ))
    return out


def markdown(rows: list[Comparison]) -> str:
    """The table RESULTS.md takes: accuracies in percent, differences in points."""

    def side(mean: float, std: float | None, n: int) -> str:
        return f"{100 * mean:.2f} ± {'n/a' if std is None else f'{100 * std:.2f}'} ({n})"

    def num(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    lines = ["| experiment | measured on | mnistlab mean ± std (n) | Keras mean ± std (n) | tutorial | "
             "difference (pt) | in SE of the difference | 95% CI (pt) | Welch p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "n/a" if r.ci95_points is None else f"{r.ci95_points[0]:+.2f} to {r.ci95_points[1]:+.2f}"
        lines.append(f"| {r.name} | {r.evaluated_on} | {side(r.mnistlab_mean, r.mnistlab_std, len(r.mnistlab))} | "
                     f"{side(r.keras_mean, r.keras_std, len(r.keras))} | {100 * r.tutorial:.2f} | "
                     f"{r.difference_points:+.2f} | {num(r.welch_t, '+.2f')} | {ci} | {num(r.p_value, '.3f')} |")
    lines.append("")
    lines.append("Accuracies in percent; std is the sample standard deviation over seeds. Difference = mnistlab mean "
                 "- Keras mean; its standard error is Welch's sqrt(s1²/n1 + s2²/n2), the CI uses Welch-Satterthwaite "
                 "degrees of freedom, p is two-sided (scipy.stats.ttest_ind, equal_var=False).")
    lines.append("")
    lines.append("Each seed's figure (%):")
    lines.append("")
    for r in rows:
        lines.append(f"- {r.name}: mnistlab {', '.join(f'{100 * v:.2f}' for v in r.mnistlab)}; "
                     f"Keras {', '.join(f'{100 * v:.2f}' for v in r.keras)}")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename, so a reader never sees half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnistlab", type=Path, action="append",
                        help="a seeds.json of `mnistlab reproduce --seeds N` (repeatable; default "
                             "benchmarks/results/reproduce_seeds.json)")
    parser.add_argument("--keras", type=Path, default=RESULTS / "keras_seeds.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "seed_distributions.md")
    args = parser.parse_args()
    paths = args.mnistlab or [RESULTS / "reproduce_seeds.json"]
    for path in [*paths, args.keras]:
        if not path.exists():
            raise SystemExit(f"{path}: not found; run `mnistlab reproduce --seeds N` / benchmarks/keras_seeds.py")
    rows = compare(load_mnistlab(paths), json.loads(args.keras.read_text()))
    if not rows:
        raise SystemExit("no experiment is in both files")
    table = markdown(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, table)
    write_atomic(args.out.with_suffix(".json"), json.dumps(
        {"inputs": {"mnistlab": [str(p) for p in paths], "keras": str(args.keras)},
         "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(table, end="")


if __name__ == "__main__":
    main()
