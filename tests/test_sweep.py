"""`mnistlab sweep` on real Ray: embedded, on a two-node cluster started here, a killed worker, a user error, Ctrl-C.

Each sweep runs as its own `mnistlab` process (the CLI a user runs), so Ray is started and stopped as it is for
them. Trials are tiny MLP runs on synthetic IDX data; every number checked is recomputed from the trials' own
files (metrics.json, model.safetensors), never taken from the sweep's own table.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.clitools import assert_one_line_error, run_cli
from tests.conftest import write_dataset_dir

pytest.importorskip("ray", reason="the `scale` extra (ray) is part of the test install")

CHECKOUT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))
# Generous bounds for a shared 2-core machine; they only stop a hung test, they measure nothing.
SWEEP_TIMEOUT_S = 300


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


def _sweep(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "mnistlab", "sweep", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=SWEEP_TIMEOUT_S, check=False)


def _start_sweep(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "mnistlab", "sweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """512 training images: a 1-epoch MLP lands between ~90% and 100%, so seeds differ."""
    return write_dataset_dir(tmp_path_factory.mktemp("sweep-data") / "tiny", n_train=512, n_test=128)


@pytest.fixture(scope="module")
def longer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4096 training images: with batch 16 an epoch is 256 steps, long enough to act on a trial mid-run."""
    return write_dataset_dir(tmp_path_factory.mktemp("sweep-data") / "longer", n_train=4096, n_test=256)


def _wait_for(predicate, what: str, proc: subprocess.Popen[str], timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the sweep ended before {what}: rc {proc.returncode}\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _epochs_committed(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "history.json").read_text()))
    except (OSError, ValueError):
        return 0


def _attempts(out: Path, index: int) -> list[dict]:
    try:
        return json.loads((out / "attempts" / f"{index:03d}.json").read_text())
    except (OSError, ValueError):
        return []


# ----------------------------------------------------------------------------------- checks before Ray starts
@pytest.mark.parametrize(("grid", "fragments"), [
    (["momentum=0.9"], ["--grid", "momentum", "batch-size"]),
    (["lr=fast"], ["--grid", "lr", "must be a number"]),
    (["batch-size=64,6.5"], ["--grid", "batch-size", "whole number"]),
    (["optimizer=adam,adamw"], ["--optimizer", "adamw", "grid optimizer=adamw"]),
    (["lr=1e-3,-1"], ["--lr", "-1"]),
    (["lr=1e-3,1e-3"], ["--grid", "listed twice"]),
])
def test_bad_grid_is_one_line_before_anything_starts(capsys, tmp_path, grid, fragments) -> None:
    out = tmp_path / "sweep"
    code, _, err = run_cli(capsys, "sweep", "mlp", "--grid", *grid, "--out", str(out))
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


@pytest.mark.parametrize(("args", "fragments"), [
    (["--seeds", "3-1"], ["--seeds", "1-3"]),
    (["--seeds", "0,x"], ["--seeds"]),
    (["--seeds", "0,0"], ["--seeds", "twice"]),
    (["--lr", "1e-3", "--grid", "lr=1e-3,3e-3"], ["--lr", "--grid"]),
    (["--cpus-per-trial", "0"], ["--cpus-per-trial"]),
    (["--gpus-per-trial", "1.5"], ["--gpus-per-trial"]),
])
def test_bad_flags_are_one_line(capsys, tmp_path, args, fragments) -> None:
    out = tmp_path / "sweep"
    code, _, err = run_cli(capsys, "sweep", "mlp", *args, "--out", str(out))
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


def test_an_address_where_nothing_listens_is_one_line(tmp_path, tiny) -> None:
    # ray.init kept retrying such an address for minutes (the subprocess timeout then failed this test).
    out = tmp_path / "sweep"
    port = _free_port()  # nothing listens on it
    proc = _sweep("mlp", "--epochs", "1", "--data-dir", str(tiny), "--out", str(out), "--address",
                  f"127.0.0.1:{port}", "--registry", str(tmp_path / "registry.sqlite"))
    assert_one_line_error(proc.returncode, proc.stderr, "--address", f"127.0.0.1:{port}", "ray start --head")
    assert not (out / "sweep.json").exists()


def test_missing_ray_names_the_extra(tmp_path) -> None:
    out = tmp_path / "sweep"
    code = ("import sys; sys.modules['ray'] = None\n"  # what an environment without the extra sees: ImportError
            "from mnistlab.cli import main\n"
            f"raise SystemExit(main(['sweep', 'mlp', '--out', {str(out)!r}]))")
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=_env(), timeout=60, check=False)
    assert_one_line_error(proc.returncode, proc.stderr, "pip install 'mnistlab[scale]'")
    assert not out.exists()


# --------------------------------------------------------------------------------------------- embedded Ray
def test_a_trial_no_node_can_hold_is_refused_instead_of_waiting_forever(tmp_path, tiny) -> None:
    # Ray keeps a task that asks for more CPUs than any node has pending for ever ("infeasible"): without the
    # check the sweep below never returns (the subprocess timeout then fails the test).
    cpus = (os.cpu_count() or 1) + 1  # accepted by Resources (<= 4x the cores), more than the embedded Ray has
    out = tmp_path / "sweep"
    proc = _sweep("mlp", "--seeds", "0", "--epochs", "1", "--data-dir", str(tiny), "--out", str(out),
                  "--registry", str(tmp_path / "registry.sqlite"), "--cpus-per-trial", str(cpus), "--no-compare")
    # Ray's own start-up warning (token authentication) may precede it: the error is mnistlab's one line.
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mnistlab")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in ("--cpus-per-trial", f"{cpus:g}", f"the largest has {os.cpu_count()}"):
        assert fragment in errors[0], errors[0]
    assert not (out / "sweep.json").exists() and not any(out.glob("000-*"))


def test_four_trial_sweep_table_is_the_trials_mean_and_std(tmp_path, tiny) -> None:
    out = tmp_path / "sweep"
    registry = tmp_path / "registry.sqlite"
    proc = _sweep("mlp", "--seeds", "0-1", "--grid", "lr=1e-3,3e-3", "--epochs", "1", "--data-dir", str(tiny),
                  "--out", str(out), "--registry", str(registry), "--cpus-per-trial", "1")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["state"] == "completed" and doc["engine"]["address"] == "embedded"
    trials = doc["trials"]
    assert len(trials) == 4 and {t["state"] for t in trials} == {"completed"}
    assert sorted((t["values"]["lr"], t["seed"]) for t in trials) == [(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)]

    # The oracle: each trial's own metrics.json, grouped and reduced here.
    by_lr: dict[float, list[float]] = {}
    for trial in trials:
        run_dir = Path(trial["run_dir"])
        assert run_dir.parent == out
        metrics = json.loads((run_dir / "metrics.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        assert (config["lr"], config["seed"], config["threads"]) == (trial["values"]["lr"], trial["seed"], 1)
        by_lr.setdefault(config["lr"], []).append(metrics["test_accuracy"])
    expected = sorted(((lr, statistics.fmean(v), float(np.std(v, ddof=1))) for lr, v in by_lr.items()),
                      key=lambda row: -row[1])
    table = doc["table"]
    assert [row["label"] for row in table] == [f"lr={lr:g}" for lr, _, _ in expected]
    for row, (_, mean, std) in zip(table, expected, strict=True):
        assert row["completed"] == 2
        assert row["mean_accuracy"] == pytest.approx(mean, abs=1e-12)
        assert row["std_accuracy"] == pytest.approx(std, abs=1e-12)
    # The printed table shows the same figures, best first.
    best = expected[0]
    printed = f"{100 * best[1]:.2f}% ± {100 * best[2]:.2f}"
    assert printed in proc.stdout, proc.stdout
    assert proc.stdout.index(f"lr={expected[0][0]:g} ") < proc.stdout.index(f"lr={expected[1][0]:g} ")

    # Each trial is a normal run with its own registry row; the sweep's pages exist and name every trial.
    from mnistlab.registry import Registry

    with Registry.open(registry, create=False) as opened:
        rows = {Path(r.path).resolve(): r for r in opened.all_runs()}
    assert {Path(t["run_dir"]).resolve() for t in trials} == set(rows)
    assert all(rows[Path(t["run_dir"]).resolve()].state == "ok" for t in trials)
    report = (out / "report.html").read_text()
    assert all(t["run_dir"] in report for t in trials)
    assert (out / "comparison" / "report.html").is_file()


def test_killed_worker_is_retried_and_resumes_bit_exact(tmp_path, longer) -> None:
    out = tmp_path / "sweep"
    settings = ["--epochs", "6", "--batch-size", "16"]
    proc = _start_sweep("mlp", "--seeds", "0", *settings, "--data-dir", str(longer), "--out", str(out),
                        "--registry", str(tmp_path / "registry.sqlite"), "--no-compare")
    run_dir = out / "000-seed0"
    # Mid-run: the first epoch is committed, the run is not finished.
    _wait_for(lambda: _epochs_committed(run_dir) >= 1 and _attempts(out, 0), "the first epoch", proc)
    first = _attempts(out, 0)[0]
    os.kill(first["pid"], signal.SIGKILL)
    killed_after = _epochs_committed(run_dir)
    stdout, stderr = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    assert proc.returncode == 0, stderr
    assert killed_after < 6, "the trial finished before it could be killed; make it longer"

    attempts = _attempts(out, 0)
    assert len(attempts) == 2 and attempts[1]["pid"] != first["pid"]
    assert 1 <= attempts[1]["resumed_from_epoch"] <= killed_after
    trial = json.loads((out / "sweep.json").read_text())["trials"][0]
    assert trial["state"] == "completed" and trial["attempts"] == 2
    assert trial["resumed_from_epoch"] == attempts[1]["resumed_from_epoch"]
    assert "2 attempts" in stdout and "resumed from epoch" in stdout  # the table says what was retried

    # The oracle: the same seed trained without interruption, in this process, one thread as the trial had.
    from safetensors.numpy import load_file

    import mnistlab

    alone = mnistlab.train("mlp", epochs=6, batch_size=16, seed=0, data_dir=longer, threads=1,
                           run_dir=tmp_path / "alone", progress=False, registry=False)
    resumed, reference = load_file(run_dir / "model.safetensors"), load_file(alone.path / "model.safetensors")
    assert resumed.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["loss"] for row in history] == [row["loss"] for row in json.loads(
        (alone.path / "history.json").read_text())]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_leaves_sweep_json_consistent(tmp_path, longer, signum) -> None:
    # SIGTERM (`timeout`, a scheduler) must act as Ctrl-C does; Ray's own handler only exited, leaving
    # sweep.json `running` with its trials `pending`.
    out = tmp_path / "sweep"
    proc = _start_sweep("mlp", "--seeds", "0-2", "--epochs", "6", "--batch-size", "16", "--data-dir", str(longer),
                        "--out", str(out), "--registry", str(tmp_path / "registry.sqlite"), "--no-compare")
    _wait_for(lambda: _epochs_committed(out / "000-seed0") >= 1, "a trial's first epoch", proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["state"] == "interrupted" and doc["finished"]
    states = [t["state"] for t in doc["trials"]]
    assert set(states) <= {"completed", "interrupted", "cancelled"} and states[0] == "interrupted"
    for trial in doc["trials"]:
        if trial["state"] == "interrupted":  # a run of its completed epochs that `train --resume` continues
            assert "--resume" in trial["error"]
            assert Path(trial["run_dir"], "config.json").is_file()


# ---------------------------------------------------------------------------------- a two-node cluster here
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head and a worker node, each its own `ray start --block` process with one CPU; stopped at the end
    (``--block``: terminating that process stops the node's Ray processes, and only those)."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # Token authentication, with a token of this test's own (not the user's ~/.ray one).
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    logs = tmp_path_factory.mktemp("ray-cluster")
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nodes.append(subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--num-cpus", "1",
                                       "--include-dashboard=false", "--disable-usage-stats", "--block"],
                                      env=env, stdout=(logs / "head.log").open("wb"), stderr=subprocess.STDOUT))
        _wait_for_nodes(address, env, count=1)
        nodes.append(subprocess.Popen([RAY, "start", "--address", address, "--num-cpus", "1", "--block"],
                                      env=env, stdout=(logs / "worker.log").open("wb"), stderr=subprocess.STDOUT))
        _wait_for_nodes(address, env, count=2)
        yield address, env
    finally:
        for node in reversed(nodes):
            node.terminate()
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()


def _wait_for_nodes(address: str, env: dict[str, str], *, count: int) -> None:
    probe = ("import ray, sys, logging\n"
             f"ray.init(address={address!r}, logging_level=logging.ERROR)\n"
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        proc = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, env=env, timeout=120,
                              check=False)
        if proc.returncode == 0 and proc.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    pytest.fail(f"the Ray cluster at {address} did not reach {count} node(s)")


def test_sweep_on_a_two_node_cluster_with_a_user_error_trial(tmp_path, tiny, two_node_cluster) -> None:
    address, env = two_node_cluster
    out = tmp_path / "sweep"
    # val-split 0.9999 passes every check at planning time and fails when the trial builds its split.
    proc = _sweep("mlp", "--seeds", "0-1", "--grid", "val-split=0,0.9999", "--epochs", "1", "--data-dir",
                  str(tiny), "--out", str(out), "--registry", str(tmp_path / "registry.sqlite"), "--address",
                  address, env=env)
    assert proc.returncode == 2, proc.stderr  # some trials failed: said in the table, and in the exit code
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["engine"]["address"] == address and doc["engine"]["nodes"] == 2
    good = [t for t in doc["trials"] if t["values"]["val-split"] == 0]
    bad = [t for t in doc["trials"] if t["values"]["val-split"] != 0]
    assert [t["state"] for t in good] == ["completed", "completed"]
    for trial in bad:  # failed alone, with the one line of the error, not retried
        assert trial["state"] == "failed" and trial["attempts"] == 1
        assert trial["error"].startswith("`val_split` 0.9999 leaves none of the 512 training images")
        assert "\n" not in trial["error"]
    # Both nodes ran trials (the tasks are spread, and each node has room for one at a time).
    assert len({t["node"] for t in doc["trials"]}) == 2
    accuracies = [json.loads(Path(t["run_dir"], "metrics.json").read_text())["test_accuracy"] for t in good]
    assert doc["table"][0]["mean_accuracy"] == pytest.approx(statistics.fmean(accuracies), abs=1e-12)
    assert "--val-split 0.9999 leaves none" in proc.stdout  # the table shows the error line, with train's flag


# ------------------------------------------------------------------------------------- reproduce over seeds
def test_reproduce_seeds_quick_reports_mean_std_and_standard_errors(tmp_path) -> None:
    """`reproduce --seeds 2 --quick` end to end (softmax and the SGD baseline, to keep it short; mlp and cnn take
    the same network path as softmax)."""
    import math

    out = tmp_path / "repro"
    proc = subprocess.run([PYTHON, "-m", "mnistlab", "reproduce", "--seeds", "2", "--quick", "--only", "softmax,sgd",
                           "--out", str(out), "--registry", str(tmp_path / "registry.sqlite")],
                          capture_output=True, text=True, env=_env(), timeout=SWEEP_TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "seeds.json").read_text())
    rows = {row["name"]: row for row in doc["rows"]}
    assert list(rows) == ["softmax", "sgd"] and doc["seeds"] == [0, 1]

    # The oracle: each experiment's trial runs, read from their own files.
    figures: dict[str, list[float]] = {}
    for name in rows:
        sweep = json.loads((out / name / "sweep.json").read_text())
        for trial in sweep["trials"]:
            run_dir = Path(trial["run_dir"])
            if name == "sgd":  # the tutorial's figure: the held-out quarter of train, split by scikit-learn
                config = json.loads((run_dir / "config.json").read_text())
                assert (config["val_split"], config["val_method"]) == (0.25, "sklearn")
                figures.setdefault(name, []).append(json.loads((run_dir / "history.json").read_text())[-1][
                    "val_accuracy"])
            else:
                figures.setdefault(name, []).append(json.loads((run_dir / "metrics.json").read_text())[
                    "test_accuracy"])
    for name, values in figures.items():
        row = rows[name]
        mean, std = statistics.fmean(values), float(np.std(values, ddof=1))
        assert row["mean"] == pytest.approx(mean, abs=1e-12) and row["std"] == pytest.approx(std, abs=1e-12)
        assert row["standard_errors"] == pytest.approx((mean - row["seed_accuracy"]) / (std / math.sqrt(2)))
        assert f"{100 * mean:.2f}% ± {100 * std:.2f}" in proc.stdout

    # Seed 0 of each experiment is the same run plain `reproduce --quick` makes (softmax: one thread in both).
    from mnistlab.reproduce import reproduce

    plain = {row.name: row.accuracy for row in reproduce(out_dir=tmp_path / "plain", quick=True, seed=0,
                                                          only=("softmax", "sgd")).rows}
    assert plain == {name: values[0] for name, values in figures.items()}
