"""The run registry: one embedded SQLite file listing every run trained, evaluated or reproduced.

Where it lives: ``--registry PATH``, else ``$MNISTLAB_HOME/registry.sqlite``, else the user's data folder
(``$XDG_DATA_HOME/mnistlab/registry.sqlite``, by default ``~/.local/share/mnistlab/registry.sqlite``).

Safety:

- WAL journal + a 30 s busy timeout + one ``BEGIN IMMEDIATE`` transaction per change, so two processes
  (two trainings finishing at once) both get their rows in, and a failing command changes nothing.
- A file that is not an SQLite database, fails SQLite's integrity check, or holds someone else's tables is
  reported as one clear error and left exactly as it was: never recreated, never overwritten.
- Reading commands never create the file. A run whose directory was deleted stays listed, marked missing.

The registry copies what it needs from each run directory (config, per-epoch history, final metrics,
versions), so ``runs list/show/compare`` still work when the directory is gone.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mnistlab.errors import MnistlabError

SCHEMA_VERSION = 1
REGISTRY_FILE = "registry.sqlite"
APPLICATION = "mnistlab-registry"
BUSY_TIMEOUT_S = 30.0
SQLITE_MAGIC = b"SQLite format 3\x00"
RecordSource = Literal["train", "evaluate", "reproduce", "ensemble"]

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    path        TEXT NOT NULL UNIQUE,          -- absolute run directory
    created     TEXT NOT NULL,                 -- first recorded, UTC ISO 8601
    updated     TEXT NOT NULL,
    source      TEXT NOT NULL,                 -- train | evaluate | reproduce | ensemble
    model       TEXT NOT NULL,
    family      TEXT NOT NULL,                 -- network | classical
    dataset     TEXT NOT NULL,
    status      TEXT,                          -- completed | interrupted
    config      TEXT NOT NULL,                 -- JSON: config.json without the environment
    history     TEXT NOT NULL,                 -- JSON: history.json rows
    metrics     TEXT NOT NULL,                 -- JSON: metrics.json without environment/checksums
    git_commit  TEXT,
    versions    TEXT NOT NULL                  -- JSON: python, torch, numpy, scikit-learn, machine
);
CREATE TABLE evaluations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    created     TEXT NOT NULL,
    split       TEXT NOT NULL,
    count       INTEGER NOT NULL,
    accuracy    REAL NOT NULL,
    loss        REAL,
    ece         REAL,
    summary     TEXT NOT NULL,                 -- JSON: top-k, per-class F1, most confused pairs, sha256
    report      TEXT                           -- the report.html written
);
CREATE INDEX evaluations_by_run ON evaluations(run_id);
"""


def is_run_id(ref: object) -> bool:
    """The one rule every command uses: an int, or ASCII digits without a path separator, is a registry id;
    anything else is a run directory (write ``./7`` for a folder literally named 7)."""
    if isinstance(ref, bool):
        return False
    if isinstance(ref, int):
        return True
    text = str(ref).strip()
    return text.isascii() and text.isdigit()


def now_utc() -> str:
    """The current time as ``2024-05-01T12:34:56Z``."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_registry_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--registry`` if given, else ``$MNISTLAB_HOME/registry.sqlite``, else the XDG data folder."""
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("MNISTLAB_HOME")
    if home:
        return Path(home).expanduser() / REGISTRY_FILE
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "mnistlab" / REGISTRY_FILE


# ------------------------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class EvaluationRecord:
    """One ``mnistlab evaluate`` of a run, as recorded."""

    id: int
    run_id: int
    created: str
    split: str
    count: int
    accuracy: float
    loss: float | None
    ece: float | None
    summary: dict[str, Any]
    report: str | None


@dataclass(frozen=True)
class RunRecord:
    """A registered run: what its directory held when recorded, plus its evaluations (newest last)."""

    id: int
    path: str
    created: str
    updated: str
    source: str
    model: str
    family: str
    dataset: str
    status: str | None
    config: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    git_commit: str | None
    versions: dict[str, Any]
    evaluations: tuple[EvaluationRecord, ...] = ()

    @property
    def exists(self) -> bool:
        """Whether the run directory is still there."""
        return Path(self.path).is_dir()

    @property
    def state(self) -> str:
        """``ok``, ``missing`` (directory deleted) or the run's own status when not completed."""
        if not self.exists:
            return "missing"
        if self.status == "running":
            from mnistlab.runs import process_alive

            # Recorded when it started; if its process is gone without recording an end, it crashed.
            return "crashed" if process_alive(self.metrics) is False else "running"
        return "ok" if self.status in (None, "completed") else str(self.status)

    @property
    def resume_command(self) -> str | None:
        """The command that continues the run, for one that crashed or was interrupted (networks only)."""
        if self.family != "network" or self.state not in ("crashed", "interrupted"):
            return None
        return f"mnistlab train --resume {self.path}"

    def latest_evaluation(self, split: str = "test") -> EvaluationRecord | None:
        """The run's most recent evaluation on ``split`` of the run's own data, if any (an evaluation on other
        data, ``evaluate --data-dir`` with different files, is kept but never stands for the run's score)."""
        found = [e for e in self.evaluations if e.split == split and e.summary.get("same_data") is not False]
        return found[-1] if found else None

    def figures(self) -> dict[str, float]:
        """Every sortable number of the run: its final metrics, ``test_error``, and the latest test ECE."""
        values = {key: float(value) for key, value in self.metrics.items()
                  if isinstance(value, int | float) and not isinstance(value, bool)}
        latest = self.latest_evaluation("test")
        if latest is not None:
            # A run scored by `evaluate` (an interrupted one has no test figures of its own) shows that score,
            # the same one `runs compare` shows.
            values.setdefault("test_accuracy", latest.accuracy)
            if latest.loss is not None:
                values.setdefault("test_loss", latest.loss)
            if latest.ece is not None:
                values["test_ece"] = latest.ece
        if "test_accuracy" in values:
            values["test_error"] = 1.0 - values["test_accuracy"]
        values["id"] = float(self.id)
        return values


def _loads(text: str | None, default: Any) -> Any:
    """A JSON column; a damaged one is a one-line error (the registry file itself is left untouched)."""
    if text is None:
        return default
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise MnistlabError(f"the registry holds a damaged record ({exc}); `mnistlab runs rm ID` forgets it, "
                            "or move the registry file aside") from None


def _run_from_row(row: sqlite3.Row, evaluations: tuple[EvaluationRecord, ...]) -> RunRecord:
    return RunRecord(
        id=row["id"], path=row["path"], created=row["created"], updated=row["updated"], source=row["source"],
        model=row["model"], family=row["family"], dataset=row["dataset"], status=row["status"],
        config=_loads(row["config"], {}), history=_loads(row["history"], []), metrics=_loads(row["metrics"], {}),
        git_commit=row["git_commit"], versions=_loads(row["versions"], {}), evaluations=evaluations,
    )


def _evaluation_from_row(row: sqlite3.Row) -> EvaluationRecord:
    return EvaluationRecord(id=row["id"], run_id=row["run_id"], created=row["created"], split=row["split"],
                            count=row["count"], accuracy=row["accuracy"], loss=row["loss"], ece=row["ece"],
                            summary=_loads(row["summary"], {}), report=row["report"])


def run_fields(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The registry's columns for a run directory (read from its files)."""
    from mnistlab import __version__
    from mnistlab.runs import read_run

    run = read_run(run_dir)
    config = {key: value for key, value in run.config.items() if key != "environment"}
    metrics = {key: value for key, value in (run.metrics or {}).items() if key not in ("environment", "checksums")}
    if "params" not in metrics and isinstance(run.model.get("params"), int):
        metrics["params"] = run.model["params"]  # an interrupted run's metrics.json has no parameter count
    env = dict((run.metrics or {}).get("environment") or run.config.get("environment") or {})
    versions = {"mnistlab": __version__, **{key: env[key] for key in (
        "python", "torch", "numpy", "scikit_learn", "platform", "cpu", "cpu_count", "cuda_device") if key in env}}
    return {
        "path": str(run.path.resolve()), "model": str(run.model.get("name")),
        "family": str(run.model.get("family", "network")),
        "dataset": str(run.model.get("dataset") or run.config.get("dataset", "mnist")),
        "status": (run.metrics or {}).get("status", "incomplete"),
        "config": json.dumps(config), "history": json.dumps(run.history), "metrics": json.dumps(metrics),
        "git_commit": env.get("mnistlab_commit"), "versions": json.dumps(versions),
    }


def evaluation_summary(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an evaluation dict the registry keeps (small enough to list and compare)."""
    report = evaluation.get("classification_report", {})
    names = evaluation.get("class_names", [])
    return {
        "top_k": evaluation.get("top_k", {}),
        "f1": {str(name): report.get(str(name), {}).get("f1-score") for name in names},
        "macro_f1": report.get("macro avg", {}).get("f1-score"),
        "most_confused": list(evaluation.get("most_confused", []))[:5],
        "weights_sha256": evaluation.get("weights_sha256"),
        "class_names": list(names),
        "same_data": evaluation.get("same_data"),  # False: scored on other data than the run's own
    }


# ----------------------------------------------------------------------------------------------- registry
class Registry:
    """An open registry database. Use :meth:`open` (or the ``with`` form) rather than the constructor."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection

    # ----------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, create: bool = True) -> Registry:
        """Open (and with ``create``, create) the registry at ``path`` (default: :func:`default_registry_path`).

        Without ``create`` a missing file is an error that says no run was recorded yet.
        """
        path = default_registry_path(path)
        if path.exists() and not path.is_file():
            raise MnistlabError(f"registry {path}: is not a file; pass `registry` with a file path")
        if not create and (not path.exists() or path.stat().st_size == 0):
            # Reading commands never create (or initialise an empty) registry file.
            raise MnistlabError(f"registry {path} holds no runs yet; "
                                "`mnistlab train MODEL` records one, or pass `registry` PATH")
        if not path.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MnistlabError(f"registry {path}: cannot create its folder ({exc.strerror}); "
                                    "pass `registry` PATH or set MNISTLAB_HOME") from None
        cls._check_header(path)
        try:
            connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise MnistlabError(f"registry {path}: cannot open it ({exc}); pass `registry` PATH") from None
        connection.row_factory = sqlite3.Row
        registry = cls(path, connection)
        try:
            registry._prepare()
        except sqlite3.DatabaseError as exc:
            connection.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise MnistlabError(f"registry {path}: still locked by another mnistlab after "
                                    f"{BUSY_TIMEOUT_S:.0f} s; try again") from None
            raise cls._corrupt(path, str(exc)) from None
        except BaseException:
            connection.close()
            raise
        return registry

    @staticmethod
    def _corrupt(path: Path, reason: str) -> MnistlabError:
        return MnistlabError(f"registry {path}: not a usable mnistlab registry ({reason}); it was left untouched: "
                             "move it aside to start a new one, or pass `registry` PATH")

    @classmethod
    def _check_header(cls, path: Path) -> None:
        """Refuse a non-empty file without SQLite's magic header before SQLite ever opens it."""
        if not path.is_file():
            return
        try:
            with open(path, "rb") as handle:
                head = handle.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise MnistlabError(f"registry {path}: cannot read it ({exc.strerror})") from None
        if head and head != SQLITE_MAGIC:
            raise cls._corrupt(path, "not an SQLite database")

    def _prepare(self) -> None:
        """Check the file is ours and intact (reading only), then WAL mode and, for a new file, the schema.

        Nothing is written before the checks pass, so a foreign or damaged file keeps every byte. Creating
        the tables is one transaction that re-checks, so two processes creating the registry at once are safe.
        """
        self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"integrity check failed: {problems[0]}")
        if not self._check_identity():
            self._set_wal()
            with self._transaction():
                if not self._check_identity():
                    # One statement at a time: executescript() would commit the open transaction first.
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                         [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION)),
                                          ("created", now_utc())])
        else:
            self._set_wal()
        self._db.execute("PRAGMA foreign_keys = ON")

    def _check_identity(self) -> bool:
        """True for an mnistlab registry, False for an empty database; raises for anything else."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            if tables - {"sqlite_sequence"}:
                raise sqlite3.DatabaseError(f"it holds other tables ({', '.join(sorted(tables))}), not mnistlab's")
            return False
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("application") != APPLICATION:
            raise sqlite3.DatabaseError("its meta table is not mnistlab's")
        try:
            version = int(meta.get("schema_version", "0"))
        except (TypeError, ValueError):
            raise sqlite3.DatabaseError(f"its schema version {meta.get('schema_version')!r} is not a number") from None
        if version > SCHEMA_VERSION:
            raise MnistlabError(f"registry {self.path}: written by a newer mnistlab (schema {version} > "
                                f"{SCHEMA_VERSION}); upgrade mnistlab or pass `registry` PATH")
        return True

    def _set_wal(self) -> None:
        """WAL lets readers and one writer work at once; switching needs a moment of exclusive access."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any exception rolls everything back."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- writing
    def _upsert(self, fields: Mapping[str, Any], *, source: RecordSource) -> int:
        """Insert a run row, or refresh the row of the same directory. Call inside a transaction.

        A SELECT first (not ``INSERT ... ON CONFLICT``, which would burn an AUTOINCREMENT id on every
        refresh); ``BEGIN IMMEDIATE`` holds the write lock, so no other writer can slip in between.
        """
        stamp = now_utc()
        columns = ("model", "family", "dataset", "status", "config", "history", "metrics", "git_commit", "versions")
        row = self._db.execute("SELECT id FROM runs WHERE path = ?", (fields["path"],)).fetchone()
        if row is not None:
            self._db.execute(f"UPDATE runs SET updated = ?, {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
                             (stamp, *(fields[c] for c in columns), row[0]))
            return int(row[0])
        cursor = self._db.execute(
            f"INSERT INTO runs (path, created, updated, source, {', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in range(len(columns) + 4))})",
            (fields["path"], stamp, stamp, source, *(fields[c] for c in columns)))
        return int(cursor.lastrowid or 0)

    def record_run(self, run_dir: str | os.PathLike[str], *, source: RecordSource = "train") -> RunRecord:
        """Add the run at ``run_dir`` (or refresh its row if that directory is already registered)."""
        fields = run_fields(run_dir)
        with self._transaction():
            run_id = self._upsert(fields, source=source)
        return self.get(run_id)

    def record_start(self, run_dir: str | os.PathLike[str], *, config: Mapping[str, Any], model: str,
                     dataset: str, history: list[dict[str, Any]], fresh: bool = False) -> RunRecord:
        """Record a training as it starts (state ``running``, with this process's pid and host), so that a run
        killed before it could record its end is still listed (as ``crashed``).

        ``fresh``: a new run, not a resume. A row already at its path then belonged to an earlier run whose
        folder was deleted; that row and its evaluations are dropped and the new run gets a new id, so an id
        never names two different trainings."""
        from mnistlab import __version__
        from mnistlab.runs import process_identity

        fields = {"path": str(Path(run_dir).resolve()), "model": model, "family": "network", "dataset": dataset,
                  "status": "running", "config": json.dumps(dict(config)), "history": json.dumps(history),
                  "metrics": json.dumps({"status": "running", **process_identity()}), "git_commit": None,
                  "versions": json.dumps({"mnistlab": __version__})}
        with self._transaction():
            if fresh:
                self._db.execute("DELETE FROM runs WHERE path = ?", (fields["path"],))
            run_id = self._upsert(fields, source="train")
        return self.get(run_id)

    def record_evaluation(self, run_dir: str | os.PathLike[str], evaluation: Mapping[str, Any], *,
                          report: str | os.PathLike[str] | None = None) -> tuple[RunRecord, EvaluationRecord]:
        """Record an evaluation of ``run_dir`` (registering the run too if needed), in one transaction."""
        fields = run_fields(run_dir)
        cal = evaluation.get("calibration") or {}
        with self._transaction():
            run_id = self._upsert(fields, source="evaluate")
            cursor = self._db.execute(
                "INSERT INTO evaluations (run_id, created, split, count, accuracy, loss, ece, summary, report) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, now_utc(), evaluation["split"], int(evaluation["count"]), float(evaluation["accuracy"]),
                 evaluation.get("loss"), cal.get("ece"), json.dumps(evaluation_summary(evaluation)),
                 None if report is None else str(Path(report).resolve())),
            )
            evaluation_id = int(cursor.lastrowid or 0)
        record = self.get(run_id)
        return record, next(e for e in record.evaluations if e.id == evaluation_id)

    def remove(self, refs: Iterable[str | int]) -> list[RunRecord]:
        """Forget the runs ``refs`` (ids or paths) and their evaluations: all of them, or none if one is unknown.

        Run directories are left on disk.
        """
        records = list({record.id: record for record in (self.resolve(ref) for ref in refs)}.values())  # raises first
        with self._transaction():
            for record in records:
                self._db.execute("DELETE FROM runs WHERE id = ?", (record.id,))
        return records

    # ----------------------------------------------------------------------------------------- reading
    def _evaluations(self, run_ids: list[int]) -> dict[int, tuple[EvaluationRecord, ...]]:
        found: dict[int, list[EvaluationRecord]] = {run_id: [] for run_id in run_ids}
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start:start + 500]
            rows = self._db.execute(
                f"SELECT * FROM evaluations WHERE run_id IN ({', '.join('?' for _ in chunk)}) ORDER BY id", chunk)
            for row in rows:
                found[row["run_id"]].append(_evaluation_from_row(row))
        return {run_id: tuple(items) for run_id, items in found.items()}

    def count(self) -> int:
        """How many runs the registry holds."""
        return int(self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def all_runs(self) -> list[RunRecord]:
        """Every run, oldest first."""
        rows = self._db.execute("SELECT * FROM runs ORDER BY id").fetchall()
        evaluations = self._evaluations([row["id"] for row in rows])
        return [_run_from_row(row, evaluations[row["id"]]) for row in rows]

    def get(self, run_id: int) -> RunRecord:
        """The run with id ``run_id``, or a one-line error naming the registry."""
        row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise MnistlabError(f"no run with id {run_id} in registry {self.path}; `mnistlab runs list` shows the ids")
        return _run_from_row(row, self._evaluations([run_id])[run_id])

    def resolve(self, ref: str | int) -> RunRecord:
        """A run by id (``7``) or by its directory path (``./7`` for a folder named 7: see :func:`is_run_id`)."""
        text = str(ref).strip()
        if is_run_id(ref):
            return self.get(int(text))
        row = self._db.execute("SELECT id FROM runs WHERE path = ?", (str(Path(text).resolve()),)).fetchone()
        if row is None:
            raise MnistlabError(f"{text!r} is neither a run id nor a registered run directory in {self.path}; "
                                "`mnistlab runs list` shows them")
        return self.get(int(row[0]))

    def list_runs(self, *, model: str | None = None, dataset: str | None = None, sort: str | None = None,
                  reverse: bool = False, limit: int | None = None) -> list[RunRecord]:
        """Runs filtered by model and dataset, sorted by a figure best first (or by id), at most ``limit``.

        "Best first" means descending for accuracies, ascending for everything else (loss, error, seconds).
        Runs without the figure go last. An empty registry is an error that says how to fill it.
        """
        if self.count() == 0:
            raise MnistlabError(f"registry {self.path} holds no runs yet; `mnistlab train MODEL` records one")
        records = [r for r in self.all_runs()
                   if (model is None or r.model == model) and (dataset is None or r.dataset == dataset)]
        if sort is not None:
            known = sorted({key for record in self.all_runs() for key in record.figures()})
            if sort not in known:
                raise MnistlabError(f"`sort` {sort!r}: no run has that figure; choose one of {', '.join(known)}")
            descending = "accuracy" in sort
            present = [r for r in records if sort in r.figures()]
            absent = [r for r in records if sort not in r.figures()]
            present.sort(key=lambda r: r.figures()[sort], reverse=descending != reverse)
            records = present + absent
        elif reverse:
            records.reverse()
        return records[:limit] if limit else records
