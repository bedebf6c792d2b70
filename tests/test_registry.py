"""The run registry: records, listing, removal, concurrent writers, deleted runs, corrupt files."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mnistlab import runs
from mnistlab.errors import MnistlabError
from mnistlab.registry import REGISTRY_FILE, Registry, default_registry_path
from tests.clitools import assert_one_line_error, run_cli


def fake_run(root: Path, name: str, *, model: str = "mlp", dataset: str = "mnist", accuracy: float = 0.9,
             seconds: float = 1.0, epochs: int = 2) -> Path:
    """A minimal run directory: the JSON files the registry reads (weights are never opened here)."""
    run = root / name
    run.mkdir(parents=True)
    runs.write_json_atomic(run / runs.CONFIG_FILE, {"model": model, "epochs": epochs, "seed": 0, "dataset": dataset,
                                                    "environment": {"python": "3.x", "mnistlab_commit": "abc"}})
    runs.write_json_atomic(run / runs.MODEL_FILE, {"name": model, "dataset": dataset, "params": 10})
    (run / runs.WEIGHTS_FILE).write_bytes(b"not read")
    history = [{"epoch": e, "loss": 1.0 / e, "accuracy": accuracy - 0.1 / e, "val_loss": None, "val_accuracy": None,
                "seconds": 0.1} for e in range(1, epochs + 1)]
    runs.write_json_atomic(run / runs.HISTORY_JSON, history)
    runs.write_json_atomic(run / runs.METRICS_FILE, {
        "status": "completed", "model": model, "test_accuracy": accuracy, "test_loss": 1 - accuracy,
        "train_seconds": seconds, "params": 10, "epochs_completed": epochs,
        "environment": {"torch": "2.x", "mnistlab_commit": "abc"}, "checksums": "verified"})
    return run


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def registry_path(tmp_path: Path) -> Path:
    return tmp_path / "reg" / "registry.sqlite"


# ------------------------------------------------------------------------------------------ basic life
def test_record_list_show_remove(tmp_path: Path, registry_path: Path) -> None:
    a = fake_run(tmp_path, "a", model="mlp", accuracy=0.95, seconds=5.0)
    b = fake_run(tmp_path, "b", model="cnn", accuracy=0.99, seconds=9.0)
    c = fake_run(tmp_path, "c", model="mlp", dataset="fashion-mnist", accuracy=0.85, seconds=2.0)
    with Registry.open(registry_path) as registry:
        ids = [registry.record_run(run).id for run in (a, b, c)]
        assert ids == [1, 2, 3]
        record = registry.get(2)
        assert (record.model, record.dataset, record.path, record.state) == ("cnn", "mnist", str(b.resolve()), "ok")
        assert record.config["epochs"] == 2 and "environment" not in record.config
        assert record.metrics["test_accuracy"] == 0.99 and "environment" not in record.metrics
        assert [row["epoch"] for row in record.history] == [1, 2]
        assert record.git_commit == "abc" and record.versions["torch"] == "2.x"
        # Best first: accuracy descending, seconds ascending; filters by model and dataset.
        assert [r.id for r in registry.list_runs(sort="test_accuracy")] == [2, 1, 3]
        assert [r.id for r in registry.list_runs(sort="train_seconds")] == [3, 1, 2]
        assert [r.id for r in registry.list_runs(sort="test_error", reverse=True)] == [3, 1, 2]
        assert [r.id for r in registry.list_runs(model="mlp")] == [1, 3]
        assert [r.id for r in registry.list_runs(model="mlp", dataset="mnist")] == [1]
        assert [r.id for r in registry.list_runs(limit=2)] == [1, 2]
        with pytest.raises(MnistlabError, match="`sort` 'bogus': no run has that figure"):
            registry.list_runs(sort="bogus")
        # Recording the same directory again refreshes its row instead of adding one.
        assert registry.record_run(a).id == 1 and registry.count() == 3
        assert registry.resolve(str(b)).id == 2 and registry.resolve("3").id == 3
        removed = registry.remove(["1", str(c)])
        assert [r.id for r in removed] == [1, 3]
        assert [r.id for r in registry.list_runs()] == [2]
        assert a.is_dir() and c.is_dir()  # forgetting a run never deletes its files
        # Ids are not reused after removal.
        assert registry.record_run(a).id == 4


def test_errors_for_unknown_ids_and_empty_registry(tmp_path: Path, registry_path: Path) -> None:
    with pytest.raises(MnistlabError, match="holds no runs yet"):
        Registry.open(registry_path, create=False)
    assert not registry_path.exists()  # reading never creates the file
    with Registry.open(registry_path) as registry:
        with pytest.raises(MnistlabError, match="holds no runs yet"):
            registry.list_runs()
        registry.record_run(fake_run(tmp_path, "a"))
        with pytest.raises(MnistlabError, match="no run with id 42"):
            registry.get(42)
        with pytest.raises(MnistlabError, match="neither a run id nor a registered run directory"):
            registry.resolve("some/where")


def test_a_failing_command_changes_nothing(tmp_path: Path, registry_path: Path) -> None:
    with Registry.open(registry_path) as registry:
        registry.record_run(fake_run(tmp_path, "a"))
        registry.record_run(fake_run(tmp_path, "b"))
        # rm with one unknown id removes none of them.
        with pytest.raises(MnistlabError, match="no run with id 9"):
            registry.remove(["1", "9"])
        assert registry.count() == 2
        # An evaluation that breaks halfway (after its run row was written) leaves no trace of either.
        fresh = fake_run(tmp_path, "c")
        with pytest.raises(KeyError):
            registry.record_evaluation(fresh, {"split": "test", "accuracy": 0.5})  # no "count": fails mid-way
        assert registry.count() == 2
        with pytest.raises(MnistlabError):
            registry.resolve(str(fresh))


def test_evaluations_are_recorded_with_their_run(tmp_path: Path, registry_path: Path) -> None:
    run = fake_run(tmp_path, "a")
    evaluation = {"split": "test", "count": 10, "accuracy": 0.8, "loss": 0.5, "calibration": {"ece": 0.03},
                  "class_names": ["0", "1"], "top_k": {"1": 0.8},
                  "classification_report": {"0": {"f1-score": 0.7}, "1": {"f1-score": 0.9},
                                            "macro avg": {"f1-score": 0.8}}}
    with Registry.open(registry_path) as registry:
        record, evaluated = registry.record_evaluation(run, evaluation, report=tmp_path / "r.html")
        assert record.id == 1 and record.source == "evaluate"
        assert (evaluated.split, evaluated.count, evaluated.accuracy, evaluated.ece) == ("test", 10, 0.8, 0.03)
        assert evaluated.summary["f1"] == {"0": 0.7, "1": 0.9}
        assert registry.get(1).figures()["test_ece"] == 0.03
        registry.remove([1])
        # Evaluations go with their run (foreign key cascade).
        assert registry._db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 0


def test_missing_run_directory_is_shown_not_fatal(tmp_path: Path, registry_path: Path) -> None:
    run = fake_run(tmp_path, "gone", accuracy=0.91)
    with Registry.open(registry_path) as registry:
        registry.record_run(run)
    shutil.rmtree(run)
    with Registry.open(registry_path, create=False) as registry:
        [record] = registry.list_runs()
        assert record.state == "missing" and not record.exists
        assert record.metrics["test_accuracy"] == 0.91 and len(record.history) == 2  # still all there


# ----------------------------------------------------------------------------------------- location
def test_location_flag_env_and_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNISTLAB_HOME", str(tmp_path / "home"))
    assert default_registry_path() == tmp_path / "home" / REGISTRY_FILE
    assert default_registry_path(tmp_path / "x.sqlite") == tmp_path / "x.sqlite"
    monkeypatch.delenv("MNISTLAB_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_registry_path() == tmp_path / "xdg" / "mnistlab" / REGISTRY_FILE
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_registry_path() == tmp_path / "user" / ".local" / "share" / "mnistlab" / REGISTRY_FILE


# --------------------------------------------------------------------------------------- corrupt files
def _valid_registry(tmp_path: Path, registry_path: Path, runs_count: int = 30) -> None:
    with Registry.open(registry_path) as registry:
        for i in range(runs_count):
            registry.record_run(fake_run(tmp_path / "runs", f"r{i}"))
        registry._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file


@pytest.mark.parametrize("damage", ["garbage", "truncated", "scribbled", "foreign", "not-a-file"])
def test_corrupt_registry_is_a_clear_error_and_left_untouched(tmp_path: Path, registry_path: Path,
                                                              damage: str) -> None:
    registry_path.parent.mkdir(parents=True)
    if damage == "garbage":
        registry_path.write_bytes(b"this is not a database, but someone's notes\n" * 100)
    elif damage == "truncated":
        _valid_registry(tmp_path, registry_path)
        data = registry_path.read_bytes()
        registry_path.write_bytes(data[: len(data) // 3])
    elif damage == "scribbled":
        _valid_registry(tmp_path, registry_path)
        data = bytearray(registry_path.read_bytes())
        for page_start in range(4096, len(data), 4096):   # wreck every page after the first
            data[page_start:page_start + 64] = b"\xff" * 64
        registry_path.write_bytes(bytes(data))
    elif damage == "foreign":
        with sqlite3.connect(registry_path) as other:
            other.execute("CREATE TABLE invoices (id INTEGER, amount REAL)")
            other.execute("INSERT INTO invoices VALUES (1, 9.5)")
        other.close()
    else:
        registry_path.mkdir()
    before = digest(registry_path) if registry_path.is_file() else None
    with pytest.raises(MnistlabError) as caught:
        Registry.open(registry_path)
    message = str(caught.value)
    assert "\n" not in message and str(registry_path) in message
    if damage != "not-a-file":
        assert "left untouched" in message and "`registry`" in message
        assert digest(registry_path) == before  # never recreated, never overwritten
        assert sorted(p.name for p in registry_path.parent.iterdir()) in ([registry_path.name],
                                                                          [registry_path.name, "runs"])


def test_empty_file_becomes_a_registry(tmp_path: Path, registry_path: Path) -> None:
    registry_path.parent.mkdir(parents=True)
    registry_path.touch()   # e.g. created by `touch` to choose the location
    with Registry.open(registry_path) as registry:
        assert registry.record_run(fake_run(tmp_path, "a")).id == 1


def test_newer_schema_is_refused(tmp_path: Path, registry_path: Path) -> None:
    with Registry.open(registry_path) as registry:
        registry._db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(MnistlabError, match="newer mnistlab"):
        Registry.open(registry_path)


def test_a_registry_locked_by_another_program_is_one_line(tmp_path: Path, registry_path: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program (here a second SQLite connection) holds an exclusive lock on a registry file that is not
    yet in WAL mode: opening waits BUSY_TIMEOUT_S, then says so in one line, and the file is left as it was."""
    from mnistlab import registry as registry_module
    from tests.clitools import assert_one_line_error, run_cli

    registry_path.parent.mkdir(parents=True)
    other = sqlite3.connect(registry_path, isolation_level=None)
    other.execute("CREATE TABLE scratch (x INTEGER)")
    other.execute("DROP TABLE scratch")   # an empty database with a header, in rollback-journal mode
    other.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(registry_module, "BUSY_TIMEOUT_S", 0.2)   # a short wait keeps the test fast
    try:
        with pytest.raises(MnistlabError) as caught:
            Registry.open(registry_path)
        assert str(caught.value) == f"registry {registry_path}: still locked by another mnistlab after 0 s; try again"
        code, _, err = run_cli(capsys, "runs", "list", "--registry", str(registry_path))
        assert_one_line_error(code, err, f"registry {registry_path}: still locked", "try again")
    finally:
        other.execute("ROLLBACK")
        other.close()
    with Registry.open(registry_path) as registry:   # once the lock is gone it opens normally
        assert registry.record_run(fake_run(tmp_path, "a")).id == 1


# ---------------------------------------------------------------------------------------- concurrency
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mnistlab.registry import Registry
    registry_path, runs_dir, flags, name, other = sys.argv[1:6]
    flags = Path(flags)

    def wait_for(flag):
        # A safety net only (a lost sibling must not hang the suite); the order is set by the flags.
        deadline = time.monotonic() + 120
        while not (flags / flag).exists():
            if time.monotonic() > deadline:
                sys.exit(f"{name}: gave up waiting for {flag}")
            time.sleep(0.005)

    (flags / f"ready-{name}").touch()
    wait_for("go")                        # the parent says go only once both writers are waiting
    for i, run in enumerate(sorted(Path(runs_dir).iterdir())):
        with Registry.open(registry_path) as registry:   # a fresh open per run, as separate commands do
            registry.record_run(run, source="train")
        if i == 0:
            # Neither writer goes past its first run until the other has written one: the two sequences of
            # writes overlap by construction, whatever the scheduler does.
            (flags / f"first-{name}").touch()
            wait_for(f"first-{other}")
    print(name, "done")
""")


def test_two_processes_writing_at_once(tmp_path: Path, registry_path: Path) -> None:
    for writer in ("a", "b"):
        for i in range(40):
            fake_run(tmp_path / writer, f"{writer}{i:02d}", accuracy=0.5 + i / 100)
    flags = tmp_path / "flags"
    flags.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(registry_path), str(tmp_path / w), str(flags), w,
                               other], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w, other in (("a", "b"), ("b", "a"))]
    try:
        # Start signal after both children are waiting for it (each has imported mnistlab and is polling).
        while not ((flags / "ready-a").exists() and (flags / "ready-b").exists()):
            assert all(proc.poll() is None for proc in procs), [proc.poll() for proc in procs]
            time.sleep(0.005)
        (flags / "go").touch()
        # A writer that fails stops the other at once (it would otherwise wait for its sibling's flag).
        while any(proc.poll() is None for proc in procs):
            if any(proc.poll() not in (None, 0) for proc in procs):
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
            time.sleep(0.01)
        outputs = [proc.communicate() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "done" in out
    with Registry.open(registry_path, create=False) as registry:
        records = registry.all_runs()
    assert len(records) == 80
    assert sorted(r.id for r in records) == list(range(1, 81))
    assert {Path(r.path).name for r in records} == {f"{w}{i:02d}" for w in "ab" for i in range(40)}
    # Every row is whole: its metrics match the directory it names.
    for record in records:
        on_disk = json.loads((Path(record.path) / runs.METRICS_FILE).read_text())
        assert record.metrics["test_accuracy"] == on_disk["test_accuracy"]


def test_registry_list_edge_cases(capsys, tmp_path: Path, mlp_run: Path) -> None:
    registry = tmp_path / "reg.sqlite"
    code, out, _ = run_cli(capsys, "runs", "list", "--json", "--registry", str(registry))
    assert code == 0 and json.loads(out) == []
    registry.write_bytes(b"")
    code, out, err = run_cli(capsys, "runs", "list", "--registry", str(registry))
    assert (code, err) == (0, "") and "no runs yet" in out   # an empty registry is not an error
    assert registry.read_bytes() == b""      # reading never initialises the file
    registry.unlink()
    code, _, err = run_cli(capsys, "evaluate", str(mlp_run), "--registry", str(registry))
    assert code == 0, err
    code, _, err = run_cli(capsys, "runs", "list", "--limit", "-1", "--registry", str(registry))
    assert_one_line_error(code, err, "--limit must be >= 1")
    code, out, err = run_cli(capsys, "runs", "rm", "1", "1", "--registry", str(registry))
    assert code == 0, err
    assert out.count("forgot run 1") == 1


def test_damaged_registry_rows_are_one_line(capsys, tmp_path: Path, mlp_run: Path) -> None:
    registry = tmp_path / "reg.sqlite"
    code, _, err = run_cli(capsys, "evaluate", str(mlp_run), "--registry", str(registry))
    assert code == 0, err
    with sqlite3.connect(registry) as db:
        db.execute("UPDATE runs SET history = '{not json'")
    code, _, err = run_cli(capsys, "runs", "show", "1", "--registry", str(registry))
    assert_one_line_error(code, err, "damaged record")
    with sqlite3.connect(registry) as db:
        db.execute("UPDATE meta SET value = 'x' WHERE key = 'schema_version'")
    before = registry.read_bytes()
    code, _, err = run_cli(capsys, "runs", "list", "--registry", str(registry))
    assert_one_line_error(code, err, "schema version")
    assert registry.read_bytes() == before
