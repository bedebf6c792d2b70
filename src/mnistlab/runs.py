"""Run directories: atomic file writes, the files a training run leaves, and loading them back.

A run directory holds::

    config.json         the TrainConfig (every hyper-parameter) + environment
    model.json          model name, class names, parameter count, input shape
    model.safetensors   weights of the last completed epoch (never pickle)
    history.json/.csv   one row per completed epoch
    curves.png          loss and accuracy per epoch, train and validation
    metrics.json        final test loss/accuracy, timing, machine, versions, status

Every file is written to a temporary name and renamed into place, so a crash or Ctrl-C never leaves half a
file: the directory always describes the last completed epoch.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import functools
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from mnistlab.errors import MnistlabError

# Which weights of a run to use: ``best`` (the best epoch's, kept by runs trained with early stopping), ``last``
# (the last completed epoch's), or ``auto``: best where the run has them, else last.
WeightsChoice = Literal["auto", "best", "last"]
WEIGHTS_CHOICES: tuple[str, ...] = get_args(WeightsChoice)

CONFIG_FILE = "config.json"
MODEL_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"
METRICS_FILE = "metrics.json"


# ------------------------------------------------------------------------------------------ atomic writes
@functools.cache
def _new_file_mode() -> int:
    """0o666 minus the process umask (read once; os.umask can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    if path.is_dir() or not path.name:
        raise MnistlabError(f"{path}: is a folder, not a file name; name the file to write")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise MnistlabError(f"{path.parent}: cannot write here ({exc.strerror}); choose another folder") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would have.
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise MnistlabError(f"{path}: cannot write it ({exc.strerror}); choose another file name") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None: bare ``NaN`` is not JSON, and strict parsers reject it."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(value) for value in obj]
    return obj


def json_text(obj: Any) -> str:
    """Strict, indented JSON text (non-finite numbers become null)."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON atomically."""
    return write_text_atomic(path, json_text(obj) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning a missing or malformed file into a :class:`MnistlabError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MnistlabError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MnistlabError(f"{path}: not readable JSON ({exc})") from None


def history_csv_text(rows: list[dict[str, Any]]) -> str:
    """Render history rows (dicts with the same keys) as CSV text."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ run directory
def default_run_dir(model: str, *, root: str | os.PathLike[str] = "runs") -> Path:
    """Create and return ``runs/<model>-<UTC timestamp>`` (``-2``, ``-3``… if taken).

    The folder is created here with an exclusive mkdir, so two runs started in the same second by two
    processes never share one.
    """
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{model}-{stamp}"
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
        except OSError as exc:
            raise MnistlabError(f"{candidate.parent}: cannot create a run folder here ({exc.strerror}); "
                                "pass `run_dir`") from None


def prepare_run_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` for a new run; refuse a folder that already holds files (never overwrite a run)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MnistlabError(f"`run_dir` {path}: exists and is not a folder; choose a new folder name")
    if path.is_dir() and any(path.iterdir()) and _abandoned_before_first_epoch(path):
        # Killed (SIGKILL, power loss) during its first epoch: nothing worth keeping; reuse the folder.
        for leftover in path.glob(".*.tmp"):  # a temporary file the kill interrupted
            leftover.unlink(missing_ok=True)
        discard_folder(path, names=(*RUN_FILES, STALE_OWNER_FILE))
        _discard_checkpoint(path)
        path.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and any(path.iterdir()):
        what = "a run" if (path / CONFIG_FILE).exists() else "files"
        raise MnistlabError(f"`run_dir` {path}: already holds {what}; choose a new folder (runs are never overwritten)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MnistlabError(f"`run_dir` {path}: cannot create it ({exc.strerror}); choose a writable folder") from None
    if not os.access(path, os.W_OK):
        raise MnistlabError(f"`run_dir` {path}: not writable; choose a writable folder")
    claim_run_dir(path)
    return path


def claim_run_dir(path: Path) -> None:
    """Take ``path`` for this process with an exclusive create of its ``.owner`` file.

    Checking that a folder is empty and then writing into it is a race: two trainings started at once on one
    ``--out`` would both pass the check and interleave their files. ``O_CREAT | O_EXCL`` succeeds for exactly
    one of them; the other gets a clear error before writing anything.
    """
    try:
        fd = os.open(path / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _new_file_mode())
    except FileExistsError:
        raise MnistlabError(f"`run_dir` {path}: another run is being written there; choose a new folder") from None
    except OSError as exc:
        raise MnistlabError(f"`run_dir` {path}: cannot write it ({exc.strerror}); choose a writable folder") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({**process_identity(), "claimed": _dt.datetime.now(_dt.UTC).isoformat()}, handle)


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def process_identity() -> dict[str, Any]:
    """This process as a run's owner: pid, host, and the pid's start time."""
    return {"pid": os.getpid(), "host": platform.node(), "pid_start": _process_start(os.getpid())}


def process_alive(identity: dict[str, Any]) -> bool | None:
    """Whether the process ``identity`` names still runs: None when it ran on another host (cannot tell)."""
    pid = identity.get("pid")
    if not isinstance(pid, int) or identity.get("host") != platform.node():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = identity.get("pid_start")
    return started is None or _process_start(pid) in (None, started)


def owner_alive(path: Path) -> bool | None:
    """Whether the process that claimed the run folder ``path`` still runs (None: unknown)."""
    try:
        identity = json.loads((path / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return process_alive(identity) if isinstance(identity, dict) else None


def _abandoned_before_first_epoch(path: Path) -> bool:
    """A run folder whose training died (its owner is gone) before committing an epoch, holding only
    mnistlab's own files."""
    ours = {*RUN_FILES, STALE_OWNER_FILE, CHECKPOINT_DIR}
    return (all(child.name in ours or child.name.endswith(".tmp") for child in path.iterdir())
            and not (path / WEIGHTS_FILE).exists() and not (path / CHECKPOINT_DIR / MANIFEST).exists()
            and owner_alive(path) is False)


def _discard_checkpoint(path: Path) -> None:
    import shutil

    shutil.rmtree(path / CHECKPOINT_DIR, ignore_errors=True)


def reclaim_run_dir(path: Path) -> None:
    """Take over the run folder ``path`` to resume it: refused while its owner still runs.

    The stale ``.owner`` is renamed away first (only one of two racing resumers' renames succeeds), then the
    folder is claimed with the same exclusive create as a new run.
    """
    alive = owner_alive(path)
    if alive:
        raise MnistlabError(f"`resume` {path}: still being trained by another process; wait for it or stop it")
    try:
        os.replace(path / OWNER_FILE, path / STALE_OWNER_FILE)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise MnistlabError(f"`resume` {path}: cannot take it over ({exc.strerror}); check its permissions") from None
    claim_run_dir(path)


def release_run_dir(path: Path) -> None:
    """Give back the claim of a run folder (training ended, or a resume was refused before it began)."""
    (path / OWNER_FILE).unlink(missing_ok=True)


OWNER_FILE = ".owner"
STALE_OWNER_FILE = ".owner.stale"
BEST_FILE = "best.safetensors"  # = checkpoint.BEST: the best epoch's weights of a run with early stopping
RUN_FILES = (CONFIG_FILE, MODEL_FILE, WEIGHTS_FILE, HISTORY_JSON, HISTORY_CSV, CURVES_PNG, METRICS_FILE, OWNER_FILE,
             BEST_FILE)


def discard_folder(path: str | os.PathLike[str], *, names: tuple[str, ...]) -> None:
    """Delete the files called ``names`` in ``path``, then the folder if that left it empty.

    Only the given (mnistlab's own) file names are deleted, so anything else that appeared there survives.
    """
    path = Path(path)
    for name in names:
        (path / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty (someone else's files) or already gone
        path.rmdir()


def discard_run_dir(path: str | os.PathLike[str]) -> None:
    """Remove a run that never completed an epoch: its run files, then the folder if that left it empty."""
    discard_folder(path, names=RUN_FILES)


def check_run_dir(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` if it is a run directory written by ``mnistlab train``, else raise MnistlabError."""
    path = Path(path)
    if not path.is_dir():
        raise MnistlabError(f"{path}: no such run directory; pass a folder written by `mnistlab train`")
    missing = [name for name in (CONFIG_FILE, MODEL_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
    if missing == [WEIGHTS_FILE]:
        raise MnistlabError(f"{path}: a run without a completed epoch yet (still in its first, or killed there); "
                            f"`mnistlab train --resume {path}` restarts it")
    if missing:
        raise MnistlabError(f"{path}: not a run directory (no {', '.join(missing)}); "
                            "pass a folder written by `mnistlab train`")
    return path


@dataclass(frozen=True)
class RunFiles:
    """The JSON parts of a run directory, read and checked."""

    path: Path
    config: dict[str, Any]
    model: dict[str, Any]
    metrics: dict[str, Any] | None
    history: list[dict[str, Any]]
    # The weights to use: the last epoch's that belong to ``history`` (the committed checkpoint's when there is
    # one), or the best epoch's when asked for (``weights_used``).
    weights: Path = Path()
    weights_used: Literal["best", "last"] = "last"
    has_best: bool = False          # whether the run kept best-epoch weights at all
    best: dict[str, Any] | None = None  # which epoch they are, by which monitor: {"monitor", "epoch", "value"}


def read_run(path: str | os.PathLike[str], *, weights: WeightsChoice = "last") -> RunFiles:
    """Read a run directory's JSON files (weights stay on disk until a model is built).

    ``weights``: ``last`` (the last completed epoch's), ``best`` (the best epoch's; a run without them is an
    error), or ``auto`` (best where the run kept them, else last).
    """
    if weights not in WEIGHTS_CHOICES:
        raise MnistlabError(f"`weights` {weights!r} is not one of {', '.join(WEIGHTS_CHOICES)}")
    path = check_run_dir(path)
    config = read_json(path / CONFIG_FILE)
    model = read_json(path / MODEL_FILE)
    metrics = read_json(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else None
    history = read_json(path / HISTORY_JSON) if (path / HISTORY_JSON).is_file() else []
    # The manifest and its state are read (and digest-checked) once for both the last and the best weights.
    manifest = read_manifest(path)
    state = committed_state(path, manifest) if manifest is not None else None
    committed = _committed(path, history, manifest, state)
    if committed is not None:
        # The manifest is the commit point: its history and weights always belong together, while the
        # top-level copies lag by one epoch if a kill landed between the commit and their update.
        history, weights_file = committed
    else:
        weights_file = path / WEIGHTS_FILE
    # The best file's digest is checked only when it is the one to be used.
    best_file, best = _best_weights(path, manifest, state, verify=weights != "last")
    used: Literal["best", "last"] = "last"
    if weights == "best" and best_file is None:
        raise MnistlabError(f"{path}: this run kept no best-epoch weights (only runs trained with `early_stop` "
                            "do); use `weights` last")
    if weights != "last" and best_file is not None:
        weights_file, used = best_file, "best"
    problems = []
    if not isinstance(config, dict) or not isinstance(config.get("val_split", 0.0), int | float):
        problems.append("config.json")
    if (not isinstance(model, dict) or not isinstance(model.get("name"), str)
            or not isinstance(model.get("num_classes", 10), int) or isinstance(model.get("num_classes"), bool)):
        problems.append("model.json")
    if metrics is not None and not isinstance(metrics, dict):
        problems.append("metrics.json")
    if not isinstance(history, list) or not all(isinstance(row, dict) and "epoch" in row for row in history):
        problems.append("history.json")
    if problems:
        raise MnistlabError(f"{path}: {', '.join(problems)} {'is' if len(problems) == 1 else 'are'} not what "
                            "mnistlab writes (edited or damaged); restore the file(s) or retrain")
    return RunFiles(path=path, config=config, model=model, metrics=metrics, history=history, weights=weights_file,
                    weights_used=used, has_best=best_file is not None, best=best)


def _best_weights(path: Path, manifest: dict[str, Any] | None, state: dict[str, Any] | None, *,
                  verify: bool) -> tuple[Path | None, dict[str, Any] | None]:
    """(file, record) of the run's best-epoch weights: the committed checkpoint's (the top-level copy may lag
    by one epoch after a kill), or the top-level ``best.safetensors`` of a run without a checkpoint."""
    if manifest is not None and state is not None:
        if BEST_FILE not in manifest["files"]:
            return None, None
        best = state.get("best")
        return committed_file(path, manifest, BEST_FILE, verify=verify), best if isinstance(best, dict) else None
    top = path / BEST_FILE
    return (top, None) if top.is_file() else (None, None)


def _committed(path: Path, top_history: Any, manifest: dict[str, Any] | None, state: dict[str, Any] | None
               ) -> tuple[Any, Path] | None:
    """(history, weights file) from the run's committed checkpoint, or None for a run without one.

    The top-level weights are used when their SHA-256 is the committed one. When the top-level history is
    behind the manifest (a kill between the commit and the copies), the checkpoint's own weights are used.
    Otherwise (history current, weights different) the file was replaced after training: it is loaded as it is,
    and checked as any weights file is.
    """
    if manifest is None or state is None:
        return None
    top = path / WEIGHTS_FILE
    if top.is_file() and file_sha256(top) == manifest["files"].get(WEIGHTS):
        return state.get("history"), top
    if isinstance(top_history, list) and len(top_history) < manifest["epoch"]:
        return state.get("history"), committed_file(path, manifest, WEIGHTS)
    return state.get("history"), top


def run_status(path: Path, metrics: dict[str, Any] | None) -> str:
    """The run's status; ``running`` becomes ``crashed`` when the process that trained it is gone."""
    status = str((metrics or {}).get("status", "unknown"))
    if status == "running" and process_alive(metrics or {}) is False:
        return "crashed"
    return status


# ------------------------------------------------------------------------------- committed checkpoints
# What mnistlab.checkpoint writes after every epoch, read here without torch: readers of a run directory
# (read_run, the registry, reports) need the committed history and weights, not the training machinery.
CHECKPOINT_DIR = "checkpoint"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
STATE = "state.json"


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The committed manifest, or None when the run has not committed an epoch (or predates checkpoints)."""
    path = run_dir / CHECKPOINT_DIR / MANIFEST
    if not path.is_file():
        return None
    manifest = read_json(path)
    if (not isinstance(manifest, dict) or not isinstance(manifest.get("epoch"), int)
            or not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("folder"), str)):
        raise MnistlabError(f"{path}: not a manifest mnistlab writes (edited or damaged); retrain the run")
    return manifest


def committed_file(run_dir: Path, manifest: dict[str, Any], name: str, *, verify: bool = True) -> Path:
    """The path of the committed ``name`` (checked against the manifest's SHA-256 unless ``verify`` is off)."""
    path = run_dir / CHECKPOINT_DIR / manifest["folder"] / name
    if not path.is_file():
        raise MnistlabError(f"{path}: missing, though {run_dir / CHECKPOINT_DIR / MANIFEST} names it; "
                            "the checkpoint was damaged: retrain the run")
    if verify and file_sha256(path) != manifest["files"].get(name):
        raise MnistlabError(f"{path}: SHA-256 differs from the manifest's (changed after it was written); "
                            "restore it or retrain the run")
    return path


def committed_state(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The committed state.json (digest-checked)."""
    state = read_json(committed_file(run_dir, manifest, STATE))
    if not isinstance(state, dict) or state.get("epoch") != manifest["epoch"]:
        raise MnistlabError(f"{run_dir / CHECKPOINT_DIR}: state.json does not match the manifest; retrain the run")
    return state


# -------------------------------------------------------------------------------------------- environment
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The current git commit of ``cwd`` (or of the mnistlab source tree), if it is a git checkout."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Machine and library versions, recorded with every run so a figure can be traced to where it ran."""
    import numpy
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "mnistlab_commit": git_commit(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


# Threads of deferred_writes()' current block (None: outside one, files are written in line).
_deferred: list[threading.Thread] | None = None


@contextmanager
def deferred_writes() -> Iterator[None]:
    """Inside the block, files that no answer depends on (a finished run's ``curves.png``: about 1 s of
    matplotlib import and plotting) may be written by :func:`write_later` in background threads, so the answer
    (metrics.json, the registry row, the CLI's summary) does not wait for them. The block's end waits for every
    one of them, so the process still exits with the run directory complete; each writer writes atomically, so
    a reader in between sees the whole file or none."""
    global _deferred
    outer, _deferred = _deferred, []
    try:
        yield
    finally:
        pending, _deferred = _deferred, outer
        for thread in pending:
            thread.join()


def writes_deferred() -> bool:
    """True inside a :func:`deferred_writes` block (of any thread)."""
    return _deferred is not None


def write_later(writer: Callable[..., object], *args: object) -> None:
    """Run ``writer(*args)`` in a background thread that the current :func:`deferred_writes` block waits for
    (in line outside one). A failure is printed by the thread and leaves the file absent, never half-written."""
    if _deferred is None:
        writer(*args)
        return
    thread = threading.Thread(target=writer, args=args, name=f"mnistlab-{getattr(writer, '__name__', 'write')}")
    thread.start()
    _deferred.append(thread)
