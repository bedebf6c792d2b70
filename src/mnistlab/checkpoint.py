"""Full training checkpoints with one atomic commit point, so a run can be continued exactly.

After every epoch a network run writes::

    checkpoint/epoch-000N/weights.safetensors    the model's state
    checkpoint/epoch-000N/optimizer.safetensors  optimizer buffers (moments) + every RNG state (uint8 tensors)
    checkpoint/epoch-000N/state.json             epoch, history, best-so-far, optimizer numbers (lr, steps,
                                                 betas), schedule position, numpy/Python RNG, data digest
    checkpoint/manifest.json                     the epoch and each file's SHA-256: THE commit point

The manifest is replaced (one ``os.replace``) only after every file of the epoch is on disk, so a kill at any
moment leaves the previous manifest naming the previous epoch's complete, digest-checked files. Folders of
epochs older than the previous one are deleted after the commit; the previous one is kept so that a reader
who read the old manifest a moment before the commit still finds its files.

The run's top-level ``model.safetensors`` / ``history.json`` are derived copies, written after the commit for
tools that read the folder directly; mnistlab's own readers (:func:`mnistlab.runs.read_run`) take history and
weights from the manifest when there is one, so they never see weights of epoch N with the history of N-1.

safetensors and JSON only: nothing here ever unpickles.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistlab import runs
from mnistlab.errors import MnistlabError

# The names a reader needs live in mnistlab.runs (torch-free); this module writes what they name.
from mnistlab.runs import (
    CHECKPOINT_DIR,
    MANIFEST,
    STATE,
    WEIGHTS,
    committed_file,
    committed_state,
    read_manifest,
    sha256,
)

OPTIMIZER = "optimizer.safetensors"
BEST = "best.safetensors"   # the best epoch's weights, for a run with early stopping
FORMAT = 1
# Test hook: seconds to sleep after an epoch's files are written and before the manifest commits them, so
# that a test's SIGKILL can land inside a checkpoint write.
PAUSE_ENV = "MNISTLAB_CHECKPOINT_PAUSE"


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint read back and digest-checked."""

    epoch: int
    folder: Path
    weights: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]   # optimizer buffers ("optimizer/NAME.i") and RNG states ("rng/NAME")
    state: dict[str, Any]
    best: bytes | None = None          # best.safetensors, when the run has early stopping


# ------------------------------------------------------------------------------------------- RNG states
def rng_tensors(shuffle: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """Every torch RNG that affects the rest of a run, as uint8 tensors (safetensors-ready)."""
    states = {"rng/torch_cpu": torch.get_rng_state(), "rng/shuffle": shuffle.get_state()}
    if device.type == "cuda":
        states["rng/cuda"] = torch.cuda.get_rng_state(device)
    keys = np.random.get_state(legacy=True)[1]  # type: ignore[index]  # the legacy tuple: (624,) uint32 keys
    states["rng/numpy_keys"] = torch.from_numpy(np.ascontiguousarray(keys).view(np.uint8).copy())
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in states.items()}


def rng_numbers() -> dict[str, Any]:
    """The numpy (all but its key array) and Python RNG states, as JSON."""
    name, _keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": [name, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}


def restore_rng(tensors: dict[str, torch.Tensor], numbers: dict[str, Any], shuffle: torch.Generator,
                device: torch.device) -> None:
    """Put every RNG back where :func:`rng_tensors` / :func:`rng_numbers` found it."""
    torch.set_rng_state(tensors["rng/torch_cpu"])
    shuffle.set_state(tensors["rng/shuffle"])
    if device.type == "cuda" and "rng/cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    name, pos, has_gauss, cached = numbers["numpy"]
    keys = tensors["rng/numpy_keys"].numpy().view(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, cached))
    version, internal, gauss_next = numbers["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ---------------------------------------------------------------------------------------------- writing
def epoch_folder(run_dir: Path, epoch: int) -> Path:
    """``checkpoint/epoch-000N``."""
    return run_dir / CHECKPOINT_DIR / f"epoch-{epoch:04d}"


def commit(run_dir: Path, *, epoch: int, weights: bytes, tensors: dict[str, torch.Tensor],
           state: dict[str, Any], best: bytes | None = None) -> dict[str, Any]:
    """Write epoch ``epoch``'s files, then publish them with the manifest (the one commit point); returns it.

    Call with interrupts deferred: the files of one epoch are written together.
    """
    from safetensors.torch import save

    folder = epoch_folder(run_dir, epoch)
    if folder.exists():  # left by a kill before this epoch's commit: never named by a manifest
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    blobs = {WEIGHTS: weights, OPTIMIZER: save(tensors, metadata={"format": "mnistlab-optimizer"}),
             STATE: (runs.json_text({**state, "format": FORMAT, "epoch": epoch}) + "\n").encode("utf-8"),
             **({BEST: best} if best is not None else {})}
    for name, data in blobs.items():
        runs.write_bytes_atomic(folder / name, data)
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if pause > 0:
        time.sleep(pause)
    manifest = {"format": FORMAT, "epoch": epoch, "folder": folder.name,
                "files": {name: sha256(data) for name, data in blobs.items()},
                "bytes": sum(len(data) for data in blobs.values())}
    runs.write_json_atomic(run_dir / CHECKPOINT_DIR / MANIFEST, manifest)
    _prune(run_dir, keep={folder.name, epoch_folder(run_dir, epoch - 1).name})
    return manifest


def _prune(run_dir: Path, *, keep: set[str]) -> None:
    """Delete epoch folders other than ``keep`` (the committed one and the one before)."""
    for child in (run_dir / CHECKPOINT_DIR).iterdir():
        if child.is_dir() and child.name.startswith("epoch-") and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)


def discard(run_dir: Path) -> None:
    """Remove the checkpoint folder (a run that never committed an epoch)."""
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- reading
def load(run_dir: Path) -> Checkpoint | None:
    """The last committed checkpoint of ``run_dir``, every file digest-checked; None if there is none."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest = read_manifest(run_dir)
    if manifest is None:
        return None
    state = committed_state(run_dir, manifest)
    try:
        weights = load_file(str(committed_file(run_dir, manifest, WEIGHTS)))
        tensors = load_file(str(committed_file(run_dir, manifest, OPTIMIZER)))
    except SafetensorError as exc:
        raise MnistlabError(f"{run_dir / CHECKPOINT_DIR}: not readable safetensors ({exc}); retrain the run") from None
    best = committed_file(run_dir, manifest, BEST).read_bytes() if BEST in manifest["files"] else None
    return Checkpoint(epoch=manifest["epoch"], folder=run_dir / CHECKPOINT_DIR / manifest["folder"],
                      weights=weights, tensors=tensors, state=state, best=best)
