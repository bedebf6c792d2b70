"""Evaluation: run a trained model over a split and compute loss and accuracy.

Batches are converted from uint8 on the fly, exactly as in training; nothing here writes files.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.config import EVAL_BATCH_SIZE
from mnistlab.models import prepare_batch


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy and accuracy over ``count`` samples."""

    loss: float
    accuracy: float
    count: int


def as_uint8_tensor(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A uint8 (N, 28, 28) tensor on ``device``, copying only when needed.

    On the CPU the tensor shares the dataset's read-only array (47 MB for MNIST's training images) instead of
    copying it; nothing in mnistlab writes into these tensors, batches are gathered copies.
    """
    if isinstance(images, torch.Tensor):
        return images.to(device)
    if torch.device(device).type == "cpu":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(images))
    return torch.tensor(images, device=device)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Logits (N, 10) float32 for uint8 images (N, 28, 28), computed in batches in eval mode.

    ``precision="bf16"`` runs under bf16 autocast, as a bf16-trained model was trained and scored.
    """
    from mnistlab.models import is_convolutional

    device = torch.device(device) if device is not None else next(model.parameters()).device
    images = as_uint8_tensor(images, device)
    channels_last = is_convolutional(model)
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            chunks = [model(prepare_batch(images[i:i + batch_size], channels_last=channels_last)).float()
                      for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    if not chunks:
        return torch.empty((0, 10), device=device)
    return torch.cat(chunks)


def evaluate_model(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on uint8 ``images`` with integer ``labels``."""
    logits = predict_logits(model, images, batch_size=batch_size, device=device, precision=precision)
    targets = (labels if isinstance(labels, torch.Tensor) else torch.tensor(labels)).to(logits.device).long()
    count = int(targets.shape[0])
    if count == 0:
        return EvalResult(loss=float("nan"), accuracy=float("nan"), count=0)
    loss = F.cross_entropy(logits, targets, reduction="sum").item() / count
    accuracy = (logits.argmax(dim=1) == targets).sum().item() / count
    return EvalResult(loss=loss, accuracy=accuracy, count=count)


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    device: str = "auto",
    batch_size: int = EVAL_BATCH_SIZE,
) -> tuple[EvalResult, dict[str, object]]:
    """Reload a run's saved weights (safetensors) and evaluate them on its dataset's ``split``.

    Returns the result and the run's recorded ``metrics.json`` (empty if the run never finished).
    Classical runs and the ``val`` split (rebuilt from the run's config) go through
    :func:`mnistlab.analysis.run_scores`; the loss of a model without probabilities (sgd, svm) is NaN.
    """
    from mnistlab.runs import read_run

    run = read_run(run_dir)
    if run.model.get("family") == "classical" or split == "val":
        from mnistlab import metrics
        from mnistlab.analysis import run_scores

        scored = run_scores(run_dir, split=split, device=device, batch_size=batch_size)
        probabilities = scored.probabilities
        if scored.score_kind == "logits":
            loss = metrics.cross_entropy_from_logits(scored.scores, scored.labels)
        else:
            loss = metrics.log_loss(probabilities, scored.labels) if probabilities is not None else float("nan")
        accuracy = metrics.accuracy(scored.labels, metrics.predictions(scored.scores))
        return EvalResult(loss=loss, accuracy=accuracy, count=len(scored.labels)), dict(run.metrics or {})
    from mnistlab.data import load_run_dataset
    from mnistlab.models import load_trained_model
    from mnistlab.train import resolve_device, resolve_precision

    torch_device = resolve_device(device)
    model, run = load_trained_model(run_dir, device=torch_device)
    precision, _ = resolve_precision(str(run.model.get("precision", "fp32")), torch_device)
    dataset = load_run_dataset(run.config, splits=(split,), run_name=str(run.path))  # type: ignore[arg-type]
    data = dataset.split(split)
    result = evaluate_model(model, data.images, data.labels, batch_size=batch_size, device=torch_device,
                            precision=precision)
    return result, dict(run.metrics or {})
