"""TensorBoard logging: :class:`TensorBoardLogger`, the callback behind ``mnistlab train --tensorboard DIR``.

Each run gets its own sub-folder of ``DIR`` (named after its run directory), so ``tensorboard --logdir DIR``
shows many runs side by side. Per epoch it writes the scalars ``loss``, ``accuracy``, ``val_loss``,
``val_accuracy``, ``lr`` and ``epoch_seconds`` (the names of history.json, step = epoch number); at the end
``test_loss`` and ``test_accuracy``; and the run's settings as hparams with the test figures as their metrics.

Exactness across ``--resume``: history.json is the record. A resumed run writes from its next epoch on (a
``SessionLog.START`` at that step, TensorBoard's ``purge_step``, hides anything a killed session wrote beyond the
checkpoint) and first fills in any checkpointed epoch the event files lack (a session killed between the
checkpoint and the event flush, or one run without ``--tensorboard``), so every epoch appears exactly once. The
hparams live in their own small event file, rewritten atomically by each session: TensorBoard keeps the first
hparams it reads for a run, so appending new ones would leave a resumed run showing its first session's settings.

``tensorboard`` is an optional extra (``pip install 'mnistlab[tensorboard]'``); torch and tensorboard are
imported only when a logger is created, so ``import mnistlab`` stays light.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from mnistlab.callbacks import Callback
from mnistlab.config import TrainConfig
from mnistlab.errors import MnistlabError
from mnistlab.results import EpochRecord

INSTALL_HINT = "pip install 'mnistlab[tensorboard]'"
# The per-epoch scalars, named as in history.json; EpochRecord.seconds is logged as ``epoch_seconds``.
EPOCH_TAGS = {"loss": "loss", "accuracy": "accuracy", "val_loss": "val_loss", "val_accuracy": "val_accuracy",
              "lr": "lr", "seconds": "epoch_seconds"}
TEST_TAGS = ("test_loss", "test_accuracy")
# Written to the run's sub-folder so a resumed run (or a later run with the same folder name) finds its own.
MARKER_FILE = "mnistlab-run.json"
# "0" sorts before the writer's "<unix time>" names: the reader meets these hparams first, and keeps them.
HPARAMS_FILE = "events.out.tfevents.0.mnistlab-hparams"
MAX_SAME_NAME = 1000  # sub-folders tried for one run name (name, name-2, ...) before giving up


def require_tensorboard() -> None:
    """Fail in one line, before any training, when the ``tensorboard`` package cannot be imported."""
    try:
        importlib.import_module("tensorboard")
    except ImportError:
        # `tensorboard` is the API's parameter; the CLI shows it as --tensorboard.
        raise MnistlabError("TensorBoard logging (`tensorboard`) needs the tensorboard package, which is not "
                            f"installed: {INSTALL_HINT} (or pip install tensorboard)") from None


def _hparam_value(value: Any) -> int | float | str | bool:
    """A setting as TensorBoard's hparams accept it (numbers, text, booleans)."""
    if isinstance(value, bool | int | float | str):
        return value
    if value is None:
        return "none"
    return json.dumps(value, sort_keys=True)


class TensorBoardLogger(Callback):
    """Writes a run's epochs, test figures and settings as TensorBoard event files under ``log_dir``.

    ``mnistlab.train(..., callbacks=[TensorBoardLogger(log_dir="tb")])`` (or ``tensorboard="tb"``); the run
    lands in ``tb/<run folder name>`` (``-2``, ``-3``... when another run already holds that name). Call
    :meth:`close` when training ends (``mnistlab.train`` and ``resume`` do): it writes the test figures from the
    run's metrics.json.
    """

    def __init__(self, *, log_dir: str | os.PathLike[str]) -> None:
        require_tensorboard()
        self.log_dir = Path(log_dir)
        if self.log_dir.exists() and not self.log_dir.is_dir():
            raise MnistlabError(f"`tensorboard` {self.log_dir}: is a file; name a folder for the event files")
        self.run_log_dir: Path | None = None
        self._run_dir: Path | None = None
        self._config: TrainConfig | None = None
        self._writer: _EventFile | None = None
        self._last_epoch = 0

    # ------------------------------------------------------------------------------------------- hooks
    def on_train_start(self, *, config: TrainConfig, run_dir: Path, steps_per_epoch: int, samples: int,
                       device: str = "cpu", precision: str = "fp32") -> None:
        """Open (or continue) the run's event files; a resumed run fills in checkpointed epochs they lack."""
        self.close()  # one logger reused for a second run starts a fresh writer
        self._run_dir, self._config = Path(run_dir), config
        history = _read_history(self._run_dir)
        self.run_log_dir = self._claim_folder(self._run_dir)
        logged = _logged_epochs(self.run_log_dir)
        self._last_epoch = len(history)
        # Everything from the next epoch on belongs to this session: the reader drops older events at those steps.
        self._writer = _EventFile(self.run_log_dir, purge_step=len(history) + 1)
        for row in history:
            if int(row["epoch"]) not in logged:
                self._write_epoch(row)
        self._write_hparams()
        self._writer.flush()

    def on_epoch_end(self, record: EpochRecord) -> None:
        """Write the epoch's scalars and flush, so a kill loses nothing that the checkpoint kept."""
        if self._writer is None:
            return
        self._write_epoch(record.to_dict())
        self._last_epoch = record.epoch
        self._writer.flush()

    def close(self) -> None:
        """Write the test figures (when the run has them) and close the event files; safe to call twice."""
        if self._writer is None:
            return
        try:
            test = _read_test(self._run_dir) if self._run_dir is not None else None
            if test is not None:
                for tag in TEST_TAGS:
                    self._writer.add_scalar(tag, test[tag], step=self._last_epoch)
        finally:
            self._writer.close()
            self._writer = None

    # ----------------------------------------------------------------------------------------- helpers
    def _write_epoch(self, row: dict[str, Any]) -> None:
        assert self._writer is not None
        for key, tag in EPOCH_TAGS.items():
            value = row.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                self._writer.add_scalar(tag, float(value), step=int(row["epoch"]))

    def _write_hparams(self) -> None:
        """Rewrite the run's hparams event file: its settings, and the names of the metrics they are compared by."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter
        from torch.utils.tensorboard.summary import hparams  # torch's helper: tensorboard's own needs TensorFlow

        from mnistlab.runs import write_bytes_atomic

        assert self._config is not None and self.run_log_dir is not None
        settings = {key: _hparam_value(value) for key, value in self._config.to_dict().items()}
        # Only the metric names go here: their values are the run's test_* scalars, which TensorBoard looks up.
        summaries = hparams(settings, dict.fromkeys(TEST_TAGS, 0.0))
        records: list[bytes] = [Event(wall_time=_now(), file_version="brain.Event:2").SerializeToString()]
        records += [Event(wall_time=_now(), step=0, summary=summary).SerializeToString() for summary in summaries]

        class _Buffer:
            def __init__(self) -> None:
                self.data = bytearray()

            def write(self, chunk: bytes) -> None:
                self.data += chunk

        buffer = _Buffer()
        writer = RecordWriter(buffer)
        for record in records:
            writer.write(record)
        write_bytes_atomic(self.run_log_dir / HPARAMS_FILE, bytes(buffer.data))

    def _claim_folder(self, run_dir: Path) -> Path:
        """This run's sub-folder: the one whose marker names it, else the first free ``name``, ``name-2``..."""
        identity = str(run_dir.resolve())
        name = run_dir.resolve().name or "run"
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            for index in range(1, MAX_SAME_NAME + 1):
                folder = self.log_dir / (name if index == 1 else f"{name}-{index}")
                marker = folder / MARKER_FILE
                if marker.is_file():
                    if _marker_run(marker) == identity:
                        return folder
                    continue
                if folder.exists() and any(folder.iterdir()):
                    continue  # someone else's events (another tool, or a run from before markers)
                folder.mkdir(exist_ok=True)
                if _create_marker(marker, identity) or _marker_run(marker) == identity:
                    return folder
                # another run named the same claimed this folder between our checks: try the next name
        except OSError as exc:
            raise MnistlabError(f"`tensorboard` {self.log_dir}: cannot write there ({exc.strerror}); "
                                "name a writable folder") from None
        raise MnistlabError(f"`tensorboard` {self.log_dir}: {MAX_SAME_NAME} runs named {name!r} already; "
                            "choose another folder")


class _EventFile:
    """One session's event file, named to sort after every earlier session's.

    TensorBoard reads a run's files in name order, and a ``SessionLog.START`` at ``purge_step`` hides the
    events at later steps read before it. The stock writers name files ``<unix second>.<host>.<pid>.<counter>``,
    so two sessions within one second can sort backwards (counter 10 before 9) and the resumed session's epochs
    vanish; here the name is ``<second>.mnistlab-<session number>``, never before an existing one.
    """

    def __init__(self, folder: Path, *, purge_step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event = Event
        earlier = [path.name.split(".")[3:5] for path in folder.glob("events.out.tfevents.*.mnistlab-*")]
        second = max([int(time.time()), *(int(parts[0]) for parts in earlier if parts[0].isdigit())])
        self.path = folder / f"events.out.tfevents.{second:010d}.mnistlab-{len(earlier) + 1:05d}"
        self._file = open(self.path, "xb")  # noqa: SIM115 - open for the session, closed by close()
        self._records = RecordWriter(self._file)
        self._write(Event(wall_time=time.time(), step=purge_step, file_version="brain.Event:2"))
        self._write(Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def _write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def add_scalar(self, tag: str, value: float, *, step: int) -> None:
        """One scalar point (TensorBoard's ``simple_value``, a float32)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        self._write(self._event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        """To the disk: a kill after this loses none of the written epochs."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush and close; the file stays as it is (append-only, complete records)."""
        if not self._file.closed:
            self.flush()
            self._file.close()


def _now() -> float:
    return time.time()


def _create_marker(marker: Path, identity: str) -> bool:
    """Write ``marker`` naming ``identity`` unless it exists; False when another process made it first.

    The marker is written whole to a private file beside the folder and hard-linked into place: the link fails
    when the name exists, so of two runs claiming one folder at once exactly one wins, and nobody reads a
    half-written marker. Where the filesystem has no hard links (FAT, some network mounts) an exclusive create
    does the same job; a reader of a marker still being written sees no run in it, i.e. someone else's claim.
    """
    text = json.dumps({"run_dir": identity}).encode()
    # Beside the folder, not in it: a private file left by a kill must not make the folder look taken.
    private = marker.parent.parent / f".{marker.parent.name}.{MARKER_FILE}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        with open(private, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(private, marker)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
    finally:
        with contextlib.suppress(OSError):
            private.unlink()
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _marker_run(marker: Path) -> str | None:
    try:
        value = json.loads(marker.read_text(encoding="utf-8")).get("run_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's committed epochs (empty for a fresh run): the checkpoint's, which the top-level history.json
    may lag by one epoch after a kill between the commit and the copies."""
    from mnistlab.runs import HISTORY_JSON, committed_state, read_json, read_manifest

    manifest = read_manifest(run_dir)
    if manifest is not None:
        rows = committed_state(run_dir, manifest).get("history", [])
    else:
        path = run_dir / HISTORY_JSON
        rows = read_json(path) if path.is_file() else []
    return [row for row in rows if isinstance(row, dict) and "epoch" in row] if isinstance(rows, list) else []


def _read_test(run_dir: Path) -> dict[str, float] | None:
    """The run's test loss and accuracy from metrics.json, when it finished (or stopped) with them."""
    from mnistlab.runs import METRICS_FILE

    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or metrics.get("status") not in ("completed", "stopped"):
        return None  # interrupted, failed or diverged: no test pass ran
    values = {tag: metrics.get(tag) for tag in TEST_TAGS}
    if all(isinstance(value, int | float) and math.isfinite(value) for value in values.values()):
        return {tag: float(value) for tag, value in values.items()}  # type: ignore[arg-type]
    return None


def _logged_epochs(folder: Path) -> set[int]:
    """The epochs whose ``accuracy`` (finite for every model) the folder's event files hold, as TensorBoard's
    reader sees them."""
    if not any(folder.glob("events.out.tfevents.*")):
        return set()
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    reader = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
    reader.Reload()
    if "accuracy" not in reader.Tags().get("scalars", []):
        return set()
    return {event.step for event in reader.Scalars("accuracy")}
