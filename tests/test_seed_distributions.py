"""benchmarks/seed_distributions.py and keras_seeds.py: the statistics RESULTS.md's over-seeds table rests on.

Oracles are independent of scipy: with equal sizes and equal variances Welch's t is Student's t with 2n - 2
degrees of freedom, whose two-sided critical values are in every t-table; the files are written by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.benchtools import load_benchmark


def test_welch_matches_the_t_table() -> None:
    welch = load_benchmark("seed_distributions").welch
    # means 2 and 5, variances 1 and 1, n 3 and 3: se = sqrt(2/3), t = -3 / sqrt(2/3), df = 4.
    se, t, df, p, ci = welch((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    assert se == pytest.approx(math.sqrt(2 / 3), rel=1e-12)
    assert t == pytest.approx(-3 / math.sqrt(2 / 3), rel=1e-12)
    assert df == pytest.approx(4.0, rel=1e-12)
    # t-table, df 4: two-sided 0.05 at 2.776, 0.02 at 3.747; |t| = 3.674 lies between.
    assert 0.02 < p < 0.05
    assert ci[0] == pytest.approx(-3 - 2.7764451 * math.sqrt(2 / 3), abs=1e-6)
    assert ci[1] == pytest.approx(-3 + 2.7764451 * math.sqrt(2 / 3), abs=1e-6)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on the zero-variance side
def test_welch_degrees_of_freedom_follow_the_noisier_side() -> None:
    welch = load_benchmark("seed_distributions").welch
    # Variances 0 and 4 (n 3 and 3): all uncertainty from b, so df = n_b - 1 = 2, not Student's 4.
    se, t, df, p, _ = welch((1.0, 1.0, 1.0), (0.0, 2.0, 4.0))
    assert se == pytest.approx(math.sqrt(4 / 3))
    assert t == pytest.approx(-1 / math.sqrt(4 / 3))
    assert df == pytest.approx(2.0)
    # t-table, df 2: two-sided 0.20 at 1.886; |t| = 0.866 is far inside.
    assert p > 0.2


def test_welch_has_nothing_to_say_without_spread() -> None:
    welch = load_benchmark("seed_distributions").welch
    assert welch((0.9,), (0.8, 0.81)) == (None,) * 5
    assert welch((0.9, 0.9), (0.8, 0.8)) == (None,) * 5


def _mnistlab_file(path: Path, rows: dict[str, tuple[str, list[float]]], *, quick: bool = False,
                   first_seed: int = 0) -> Path:
    path.write_text(json.dumps({"quick": quick, "rows": [
        {"name": name, "evaluated_on": on, "accuracies": acc, "seed_accuracy": 0.9,
         "seeds": list(range(first_seed, first_seed + len(acc)))}
        for name, (on, acc) in rows.items()]}))
    return path


def test_compare_pairs_experiments_and_reports_points(tmp_path: Path) -> None:
    bench = load_benchmark("seed_distributions")
    mnistlab = bench.load_mnistlab([
        _mnistlab_file(tmp_path / "a.json", {"softmax": ("test set", [0.91, 0.92, 0.93]),
                                             "cnn": ("test set", [0.99])}),
        # A second file's seeds join the first's (the CNN study extended by another run).
        _mnistlab_file(tmp_path / "b.json", {"cnn": ("test set", [0.991])}, first_seed=1),
    ])
    keras = {"experiments": {"softmax": {"evaluated_on": "test set", "accuracies": [0.90, 0.91, 0.92]},
                             "cnn": {"evaluated_on": "test set", "accuracies": [0.99, 0.992, 0.994]},
                             "mlp": {"evaluated_on": "test set", "accuracies": [0.98, 0.97]}}}
    rows = bench.compare(mnistlab, keras)
    assert [r.name for r in rows] == ["softmax", "cnn"]  # the tutorial's order; mlp only on one side
    softmax = rows[0]
    assert softmax.difference_points == pytest.approx(1.0)
    assert softmax.standard_error_points == pytest.approx(100 * math.sqrt(2 * 0.0001 / 3))
    assert rows[1].mnistlab == (0.99, 0.991)
    table = bench.markdown(rows)
    assert "| softmax | test set | 92.00 ± 1.00 (3) | 91.00 ± 1.00 (3) | 90.00 | +1.00 | +1.22 |" in table


def test_a_seed_in_two_files_is_refused(tmp_path: Path) -> None:
    bench = load_benchmark("seed_distributions")
    files = [_mnistlab_file(tmp_path / "a.json", {"cnn": ("test set", [0.99, 0.991])}),
             _mnistlab_file(tmp_path / "b.json", {"cnn": ("test set", [0.992])}, first_seed=1)]
    with pytest.raises(SystemExit, match=r"seed\(s\) \[1\]"):
        bench.load_mnistlab(files)


def test_compare_refuses_figures_measured_on_different_sets(tmp_path: Path) -> None:
    bench = load_benchmark("seed_distributions")
    mnistlab = bench.load_mnistlab([_mnistlab_file(tmp_path / "a.json", {"sgd": ("test set", [0.91, 0.92])})])
    keras = {"experiments": {"sgd": {"evaluated_on": "held-out 25% of train", "accuracies": [0.9, 0.91]}}}
    with pytest.raises(SystemExit, match="not comparable"):
        bench.compare(mnistlab, keras)


def test_quick_runs_are_refused(tmp_path: Path) -> None:
    bench = load_benchmark("seed_distributions")
    with pytest.raises(SystemExit, match="--quick"):
        bench.load_mnistlab([_mnistlab_file(tmp_path / "q.json", {"softmax": ("test set", [0.9])}, quick=True)])


def test_keras_seeds_parses_counts_ranges_and_lists() -> None:
    parse = load_benchmark("keras_seeds").parse_seeds
    assert parse("5") == [0, 1, 2, 3, 4]
    assert parse("3-5") == [3, 4, 5]
    assert parse("0,3,7") == [0, 3, 7]
    assert parse("0-1,7") == [0, 1, 7]
    for bad in ("5-3", "1,1", "0"):
        with pytest.raises(SystemExit):
            parse(bad)


def test_keras_seeds_summary_is_mean_and_sample_std() -> None:
    summarise = load_benchmark("keras_seeds").summarise
    runs = [{"experiment": "mlp", "seed": s, "accuracy": a, "evaluated_on": "test set", "train_seconds": 1.0}
            for s, a in ((2, 0.98), (0, 0.96), (1, 0.97))]
    row = summarise(runs)["mlp"]
    assert row["seeds"] == [0, 1, 2]
    assert row["accuracies"] == [0.96, 0.97, 0.98]
    assert row["mean"] == pytest.approx(0.97)
    assert row["std"] == pytest.approx(0.01)  # sample (n - 1), not population: that would be 0.00816
