"""Ensembles: several trained networks scored as one, by the average of their softmax probabilities.

An ensemble directory is a normal run directory, so everything that takes a run (evaluate, predict, serve on
both backends, export, the registry) takes it unchanged::

    config.json         model "ensemble", the dataset (and data folder) the members share, the members' list
    model.json          name "ensemble", class names, and each member's own model record and provenance
    model.safetensors   every member's tensors under ``member{i}.`` prefixes: a self-contained copy, so moving
                        or deleting a member later does not break the ensemble
    metrics.json        the ensemble's test loss/accuracy (scored once through the one scoring path) and each
                        member's, with their mean and standard deviation

:class:`mnistlab.models.Ensemble` returns ``log(mean_i softmax(member_i(x)))``: logits whose softmax IS the
averaged probability (the log of a distribution is a valid logit vector), so
:func:`mnistlab.inference.predict_logits`, the cross-entropy of the evaluation and the ONNX graph need no special
case.

Precision: an ensemble is built and scored in fp32, whatever its members trained in (bf16-trained runs keep
fp32 master weights, so this is exact and the same on every device); each member's figure here is its fp32
score through the same path, beside the test accuracy it recorded at training.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.errors import MnistlabError
from mnistlab.runs import RunFiles, WeightsChoice

ENSEMBLE_NAME = "ensemble"
MAX_MEMBERS = 32  # bounds the memory and time of one ensemble (each member is a full network per batch)


def _check_members(runs: Sequence[RunFiles]) -> None:
    """Members must read the same images as the same classes of the same dataset: one line otherwise."""
    first = runs[0]
    for run in runs:
        if run.model.get("family") == "classical":
            raise MnistlabError(f"{run.path}: a classical {run.model.get('name')} model; an ensemble averages "
                                "network probabilities, so give network runs only")
        if run.model.get("name") == ENSEMBLE_NAME:
            raise MnistlabError(f"{run.path}: is an ensemble itself; list its members instead")
    for run in runs[1:]:
        for key, what in (("num_classes", "classes"), ("class_names", "class names"),
                          ("input_shape", "input shape"), ("dataset", "dataset")):
            mine, theirs = run.model.get(key), first.model.get(key)
            if mine != theirs:
                raise MnistlabError(f"{run.path}: its {what} ({_short(mine)}) differ from {first.path}'s "
                                    f"({_short(theirs)}); ensemble members must agree on input, classes and dataset")
        mine, theirs = _test_digest(run), _test_digest(first)
        if mine and theirs and mine != theirs:
            raise MnistlabError(f"{run.path}: was tested on other data than {first.path} (test SHA-256 "
                                f"{mine[:12]} vs {theirs[:12]}); ensemble members must share their dataset")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _test_digest(run: RunFiles) -> str | None:
    digest = ((run.metrics or {}).get("data_sha256") or {}).get("test")
    return str(digest) if digest else None


def _shared(runs: Sequence[RunFiles], key: str, default: Any) -> Any:
    """The members' common config value of ``key``, or ``default`` where they differ."""
    values = {repr(run.config.get(key, default)) for run in runs}
    return runs[0].config.get(key, default) if len(values) == 1 else default


def make_ensemble(members: Sequence[str | os.PathLike[str]], *, out: str | os.PathLike[str] | None = None,
                  weights: WeightsChoice = "auto", run_ids: Sequence[int | None] | None = None,
                  device: str = "auto") -> Path:
    """Write an ensemble of the network runs ``members`` (directories) into ``out`` (default
    ``runs/ensemble-<time>``) and return its directory.

    ``weights``: which weights of each member (best, last, or auto: best where it kept them); ``run_ids``: the
    members' registry ids, recorded beside their paths. The members' test split is scored once, through the one
    scoring path, for the ensemble and for each member (``device``: where; figures are fp32 everywhere).
    """
    from mnistlab import runs as runfiles
    from mnistlab.data import load_run_dataset, split_sha256
    from mnistlab.device import resolve_device
    from mnistlab.inference import predict_logits
    from mnistlab.models import (
        INPUT_SHAPE,
        Ensemble,
        count_parameters,
        load_trained_model,
        model_record,
        weights_bytes,
    )

    paths = [Path(member) for member in members]
    if len(paths) < 2:
        raise MnistlabError(f"an ensemble needs at least two runs, got {len(paths)}; list two or more RUNs")
    if len(paths) > MAX_MEMBERS:
        raise MnistlabError(f"an ensemble takes at most {MAX_MEMBERS} runs, got {len(paths)}; list fewer")
    ids = list(run_ids) if run_ids is not None else [None] * len(paths)
    if len(ids) != len(paths):
        raise MnistlabError("`run_ids`: give one id (or None) per member")
    seen: dict[Path, Path] = {}
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            raise MnistlabError(f"{path}: listed twice; each run can be a member once")
        seen[resolved] = path
    files = [runfiles.read_run(path, weights=weights) for path in paths]
    _check_members(files)
    torch_device = resolve_device(device)
    # The members' modules, loaded (and so checked against their model.json) before anything is written.
    modules = [load_trained_model(run.path, device="cpu", weights=run.weights_used)[0] for run in files]
    ensemble = Ensemble(modules).eval()
    first = files[0]
    dataset = load_run_dataset(first.config, splits=("test",), run_name=str(first.path))
    test = dataset.split("test")
    digest = split_sha256(test)
    labels = torch.as_tensor(test.labels.astype("int64"))

    def figures(module: nn.Module) -> tuple[float, float]:
        from mnistlab.models import to_device

        logits = predict_logits(to_device(module, torch_device), test.images, device=torch_device,
                                precision="fp32").cpu()
        loss = F.cross_entropy(logits, labels, reduction="mean").item() if len(labels) else float("nan")
        accuracy = (logits.argmax(dim=1) == labels).double().mean().item() if len(labels) else float("nan")
        return float(loss), float(accuracy)

    member_figures = [figures(module) for module in modules]
    loss, accuracy = figures(ensemble)
    ensemble = ensemble.to("cpu")

    target = Path(out) if out is not None else runfiles.default_run_dir(ENSEMBLE_NAME)
    runfiles.prepare_run_dir(target)
    try:
        entries: list[dict[str, Any]] = []
        for index, (run, run_id, (m_loss, m_accuracy)) in enumerate(zip(files, ids, member_figures, strict=True)):
            entries.append({
                "prefix": f"member{index}.", "path": str(run.path.resolve()), "run_id": run_id,
                "weights": run.weights_used, "weights_sha256": runfiles.file_sha256(run.weights),
                "best_epoch": run.best if run.weights_used == "best" else None,
                "model": dict(run.model), "test_loss": m_loss, "test_accuracy": m_accuracy,
                "recorded_test_accuracy": (run.metrics or {}).get("test_accuracy"),
            })
        class_names = tuple(str(name) for name in first.model.get("class_names") or dataset.class_names)
        record = model_record(ENSEMBLE_NAME, ensemble, class_names=class_names,
                              dataset=str(first.model.get("dataset", dataset.name)), precision="fp32")
        record.update({"custom": False, "family": "network", "input_shape": list(INPUT_SHAPE),
                       "members": [{key: entry[key] for key in ("prefix", "path", "run_id", "weights",
                                                                 "weights_sha256", "model")} for entry in entries]})
        config = {
            "model": ENSEMBLE_NAME, "dataset": first.config.get("dataset", dataset.name),
            "data_dir": first.config.get("data_dir"),
            # A validation split exists only where every member held out the same images (same fraction and
            # seed); otherwise some member trained on the others' validation images, and there is none.
            "val_split": _shared(files, "val_split", 0.0) if _shared(files, "seed", None) is not None else 0.0,
            "seed": _shared(files, "seed", 0), "precision": "fp32", "weights": weights,
            "members": [entry["path"] for entry in entries], "environment": runfiles.environment(),
        }
        accuracies = [accuracy for _, accuracy in member_figures]
        mean = sum(accuracies) / len(accuracies)
        std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1))
        metrics = {
            "status": "completed", "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "test_loss": loss, "test_accuracy": accuracy, "test_count": len(labels),
            "member_test_accuracy_mean": mean, "member_test_accuracy_std": std,
            "members": [{key: entry[key] for key in ("path", "run_id", "weights", "test_loss", "test_accuracy",
                                                      "recorded_test_accuracy")} | {"model": entry["model"]["name"]}
                        for entry in entries],
            "params": count_parameters(ensemble), "device": str(torch_device), "precision": "fp32",
            "data_sha256": {"test": digest}, "checksums": (first.metrics or {}).get("checksums", "unknown"),
            "epochs_completed": 0, "environment": config["environment"],
        }
        runfiles.write_bytes_atomic(target / runfiles.WEIGHTS_FILE, weights_bytes(ensemble))
        runfiles.write_json_atomic(target / runfiles.MODEL_FILE, record)
        runfiles.write_json_atomic(target / runfiles.HISTORY_JSON, [])
        runfiles.write_json_atomic(target / runfiles.METRICS_FILE, metrics)
        # config.json last: until it exists the folder is not a run (check_run_dir), so a crash above leaves
        # no half ensemble that loads.
        runfiles.write_json_atomic(target / runfiles.CONFIG_FILE, config)
    except BaseException:
        runfiles.discard_run_dir(target)
        raise
    finally:
        runfiles.release_run_dir(target)
    return target
