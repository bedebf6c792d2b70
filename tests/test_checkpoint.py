"""Stop, kill and resume with real processes and real signals: a resumed run is bit-identical to one left alone.

Every training here is ``python -m mnistlab train`` in a subprocess on a 3,000-image synthetic dataset (an
MLP, one thread, four epochs of ~190 steps). The oracle is the same command left alone: the same weights bytes
(SHA-256), the same history apart from seconds, the same test figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mnistlab import checkpoint, runs
from tests.conftest import write_dataset_dir

SRC = Path(__file__).resolve().parents[1] / "src"
EPOCHS = 4


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != checkpoint.PAUSE_ENV}
    return {**env, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "MNISTLAB_HOME": str(home), "COLUMNS": "250", **extra}


class Lab:
    """A dataset, a registry and the command line, shared by the tests of this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = write_dataset_dir(root / "data", n_train=3000, n_test=200)
        self.registry = root / "registry.sqlite"
        self.home = root / "home"

    def args(self, out: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
        return ["train", "mlp", "--epochs", str(epochs), "--batch-size", "16", "--threads", "1", "--device", "cpu",
                "--val-split", "0.1", "--data-dir", str(self.data), "--out", str(out), *extra]

    def start(self, args: list[str], **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "mnistlab", *args, "--registry", str(self.registry)],
                                env=_env(self.home, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def run(self, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        proc = self.start(args, **env)
        out, err = proc.communicate(timeout=600)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def resume(self, run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        done = self.run(["train", "--resume", str(run_dir), *extra])
        assert done.returncode == 0, done.stderr
        return done


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab(tmp_path_factory.mktemp("resume"))


def fingerprint(run_dir: Path) -> dict[str, object]:
    """What must be identical between two runs of the same settings (timings left out)."""
    history = json.loads((run_dir / runs.HISTORY_JSON).read_text())
    metrics = json.loads((run_dir / runs.METRICS_FILE).read_text())
    return {
        "weights": hashlib.sha256((run_dir / runs.WEIGHTS_FILE).read_bytes()).hexdigest(),
        "history": [{k: v for k, v in row.items() if k != "seconds"} for row in history],
        "metrics": {k: metrics.get(k) for k in ("status", "epochs_completed", "test_loss", "test_accuracy",
                                                  "train_loss", "val_loss", "val_accuracy")},
    }


@pytest.fixture(scope="module")
def reference(lab: Lab) -> dict[str, object]:
    """The run left alone."""
    done = lab.run(lab.args(lab.root / "reference"))
    assert done.returncode == 0, done.stderr
    found = fingerprint(lab.root / "reference")
    assert found["metrics"]["status"] == "completed"  # type: ignore[index]
    return found


def committed_epoch(run_dir: Path) -> int:
    manifest = run_dir / checkpoint.CHECKPOINT_DIR / checkpoint.MANIFEST
    try:
        return int(json.loads(manifest.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_until(proc: subprocess.Popen[str], condition: Callable[[], bool]) -> None:
    """Poll until ``condition`` holds while ``proc`` still runs (a bound, not a timing assertion)."""
    deadline = time.monotonic() + 300
    while not condition():
        assert proc.poll() is None, f"training ended before the moment to signal it: {proc.stderr.read()}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.005)


def registry_state(lab: Lab, run_dir: Path) -> str:
    from mnistlab.registry import Registry

    with Registry.open(lab.registry, create=False) as registry:
        return registry.resolve(str(run_dir)).state


# ------------------------------------------------------------------------------------------- SIGKILL
@pytest.mark.parametrize("after_epoch", [1, 2, 3])
def test_sigkill_inside_an_epoch_then_resume_is_bit_identical(lab: Lab, reference: dict[str, object],
                                                              after_epoch: int) -> None:
    out = lab.root / f"kill-in-epoch-{after_epoch}"
    proc = lab.start(lab.args(out))
    wait_until(proc, lambda: committed_epoch(out) >= after_epoch)
    time.sleep(random.Random(after_epoch).uniform(0.0, 0.15))   # somewhere in the next epoch
    proc.kill()
    proc.wait()
    kept = committed_epoch(out)
    assert after_epoch <= kept < EPOCHS
    # What it left is a consistent run of its last committed epoch.
    files = runs.read_run(out)
    assert len(files.history) == kept
    assert registry_state(lab, out) == "crashed"
    listing = lab.run(["runs", "list", "--registry", str(lab.registry)])
    assert "crashed" in listing.stdout and f"mnistlab train --resume {out.resolve()}" in listing.stdout
    lab.resume(out)
    assert fingerprint(out) == reference
    assert registry_state(lab, out) == "ok"


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_epoch(lab: Lab, reference: dict[str, object]) -> None:
    """The kill lands after epoch 2's files are written and before the manifest commits them."""
    out = lab.root / "kill-in-commit"
    proc = lab.start(lab.args(out), **{checkpoint.PAUSE_ENV: "30"})
    pending = checkpoint.epoch_folder(out, 2) / checkpoint.STATE
    wait_until(proc, pending.is_file)
    proc.kill()
    proc.wait()
    assert committed_epoch(out) == 1
    assert pending.is_file()            # epoch 2 was fully written, but never committed
    files = runs.read_run(out)
    assert len(files.history) == 1
    assert hashlib.sha256(files.weights.read_bytes()).hexdigest() == json.loads(
        (out / checkpoint.CHECKPOINT_DIR / checkpoint.MANIFEST).read_text())["files"][checkpoint.WEIGHTS]
    lab.resume(out)
    assert fingerprint(out) == reference
    assert not checkpoint.epoch_folder(out, 1).exists()  # older epochs pruned after later commits


def test_sigkill_in_the_first_epoch_leaves_a_folder_resume_restarts(lab: Lab, reference: dict[str, object]) -> None:
    out = lab.root / "kill-first"
    proc = lab.start(lab.args(out), **{checkpoint.PAUSE_ENV: "30"})
    wait_until(proc, (checkpoint.epoch_folder(out, 1) / checkpoint.STATE).is_file)
    proc.kill()
    proc.wait()
    assert committed_epoch(out) == 0
    evaluated = lab.run(["evaluate", str(out), "--registry", str(lab.registry)])
    assert evaluated.returncode == 2 and "not a run directory" not in evaluated.stderr
    assert f"--resume {out}" in evaluated.stderr
    # `train --out` of the same folder is not refused either: it starts over (copy first, to resume the other).
    again = lab.root / "kill-first-again"
    shutil.copytree(out, again)
    lab.resume(out)
    assert fingerprint(out) == reference
    done = lab.run(lab.args(again))
    assert done.returncode == 0, done.stderr
    assert fingerprint(again) == reference


# ------------------------------------------------------------------------------------ SIGTERM, SIGHUP
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_stop_signals_leave_an_interrupted_run_that_resumes_exactly(lab: Lab, reference: dict[str, object],
                                                                    signum: signal.Signals) -> None:
    out = lab.root / f"signal-{signum.name}"
    proc = lab.start(lab.args(out))
    wait_until(proc, lambda: committed_epoch(out) >= 2)
    assert registry_state(lab, out) == "running"   # recorded when it started, its process alive
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err
    assert f"mnistlab train --resume {out}" in err
    metrics = json.loads((out / runs.METRICS_FILE).read_text())
    assert metrics["status"] == "interrupted" and metrics["epochs_completed"] == committed_epoch(out) >= 2
    assert registry_state(lab, out) == "interrupted"
    lab.resume(out)
    assert fingerprint(out) == reference


# -------------------------------------------------------------------------------- refusals, extension
def test_resume_refuses_settings_that_would_change_the_run(lab: Lab, reference: dict[str, object]) -> None:
    out = lab.root / "refuse"
    done = lab.run(lab.args(out, epochs=2))
    assert done.returncode == 0, done.stderr
    before = fingerprint(out)
    for extra, flag in ((["--batch-size", "32"], "--batch-size"), (["cnn"], "model 'cnn'"),
                        (["--seed", "3"], "--seed"), (["--lr", "0.01"], "--lr"),
                        (["--augment", "strong"], "--augment")):
        refused = lab.run(["train", "--resume", str(out), *extra])
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0] and "differs from the run's" in lines[0], lines
    monitor = lab.run(["train", "--resume", str(out), "--monitor", "val_accuracy"])
    assert monitor.returncode == 2 and "--monitor" in monitor.stderr, monitor.stderr
    assert fingerprint(out) == before        # nothing was touched
    finished = lab.run(["train", "--resume", str(out)])
    assert finished.returncode == 2 and "already holds 2 of its 2 epochs" in finished.stderr


def test_resume_of_a_finished_run_with_more_epochs_extends_it(lab: Lab, reference: dict[str, object]) -> None:
    """A constant-schedule run of 2 epochs extended to 4 equals a run trained for 4 from the start."""
    out = lab.root / "extend"
    done = lab.run(lab.args(out, epochs=2))
    assert done.returncode == 0, done.stderr
    lab.resume(out, "--epochs", str(EPOCHS), "--threads", "1")
    found = fingerprint(out)
    assert found == reference


def test_a_run_stopped_after_its_last_epoch_is_scored_by_resume(lab: Lab, reference: dict[str, object]) -> None:
    """A signal during the final test pass leaves all epochs but no test figures: --resume only scores it."""
    out = lab.root / "unscored"
    shutil.copytree(lab.root / "reference", out)
    metrics = json.loads((out / runs.METRICS_FILE).read_text())
    runs.write_json_atomic(out / runs.METRICS_FILE, {"status": "interrupted", "epochs_completed": EPOCHS,
                                                     "environment": metrics["environment"]})
    done = lab.resume(out)
    assert "test accuracy" in done.stdout
    assert fingerprint(out) == reference
