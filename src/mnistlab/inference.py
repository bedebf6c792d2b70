"""The one path from a model's weights to scores: batched, in eval mode, in the precision the run was made in.

Training's validation/test passes, ``evaluate``, ``predict``, ``serve`` and the reports all call
:func:`predict_logits`, so a bf16-trained network gives the same logits (to the bit, for the same batches)
wherever it is scored. Batches stay uint8 until :func:`mnistlab.models.prepare_batch` converts them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.config import EVAL_BATCH_SIZE
from mnistlab.device import Precision, resolve_device, resolve_precision
from mnistlab.models import is_convolutional, load_trained_model, prepare_batch
from mnistlab.results import EvalResult
from mnistlab.runs import RunFiles


def as_uint8_tensor(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A uint8 (N, 28, 28) tensor on ``device``, copying only when needed.

    On the CPU the tensor shares the dataset's read-only array (47 MB for MNIST's training images) instead of
    copying it; nothing in mnistlab writes into these tensors, batches are gathered copies.
    """
    if isinstance(images, torch.Tensor):
        return images.to(device)
    if torch.device(device).type == "cpu":
        if images.flags.writeable and images.flags.c_contiguous:
            return torch.from_numpy(images)  # no copy, and no warning to silence (the cheap path for one image)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(images))
    return torch.tensor(images, device=device)


def predict_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | str | None = None,
    precision: Precision | str = "fp32",
) -> torch.Tensor:
    """Logits (N, classes) float32 for uint8 images (N, 28, 28), in batches of ``batch_size``, in eval mode.

    ``precision="bf16"`` runs under bf16 autocast, as a bf16-trained model was trained and scored. Uses
    inference mode and leaves a model that is already in eval mode untouched, so it is cheap for one image
    and safe to call from several threads at once (the server does).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    images = as_uint8_tensor(images, device)
    channels_last = is_convolutional(model)
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                                     enabled=precision == "bf16"):
            # max(N, 1): an empty input still runs one empty batch, so the result has the right width.
            chunks = [model(prepare_batch(images[i:i + batch_size], channels_last=channels_last)).float()
                      for i in range(0, max(int(images.shape[0]), 1), batch_size)]
    finally:
        if was_training:
            model.train()
    return torch.cat(chunks)


def evaluate_model(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | str | None = None,
    precision: Precision | str = "fp32",
) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on uint8 ``images`` with integer ``labels``."""
    logits = predict_logits(model, images, batch_size=batch_size, device=device, precision=precision)
    targets = (labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels)))
    targets = targets.to(logits.device).long()
    count = int(targets.shape[0])
    if count == 0:
        return EvalResult(loss=float("nan"), accuracy=float("nan"), count=0)
    loss = F.cross_entropy(logits, targets, reduction="sum").item() / count
    accuracy = (logits.argmax(dim=1) == targets).sum().item() / count
    return EvalResult(loss=loss, accuracy=accuracy, count=count)


@dataclass(frozen=True)
class LoadedNetwork:
    """A run's network ready to score: the module (eval mode, on ``device``) and the precision to score in."""

    model: nn.Module
    run: RunFiles
    device: torch.device
    precision: Precision

    def logits(self, images: np.ndarray | torch.Tensor, *, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
        """float32 logits (N, classes) for uint8 images (N, 28, 28)."""
        return predict_logits(self.model, images, batch_size=batch_size, device=self.device,
                              precision=self.precision)


def load_network(run_dir: Any, *, device: str = "auto", weights: str = "last") -> LoadedNetwork:
    """Load a network run for scoring, in the precision it was trained in (resolved for ``device``), with its
    ``weights`` (last, best or auto: :func:`mnistlab.runs.read_run`)."""
    torch_device = resolve_device(device)
    model, run = load_trained_model(run_dir, device=torch_device, weights=weights)
    precision, _ = resolve_precision(str(run.model.get("precision", "fp32")), torch_device)
    return LoadedNetwork(model=model, run=run, device=torch_device, precision=precision)
