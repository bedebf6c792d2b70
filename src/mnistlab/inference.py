"""The one path from a model's weights to scores: batched, in eval mode, in the precision the run was made in.

Training's validation/test passes, ``evaluate``, ``predict``, ``serve`` and the reports all call
:func:`predict_logits`, so a bf16-trained network gives the same logits (to the bit, for the same batches)
wherever it is scored. Batches stay uint8 until :func:`mnistlab.models.prepare_batch` converts them.
"""

from __future__ import annotations

import math
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


# Test-time augmentation: the image itself and its copies moved by one pixel right, left, down and up (dy, dx),
# with black (0) filling the vacated row or column. MNIST centres each digit by its centre of mass, so a
# one-pixel error in that centring is the commonest small change a reader meets; larger moves or rescaling
# change the digit's size relative to the 20x20 box MNIST normalises to.
TTA_SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))
TTA_NAMES: tuple[str, ...] = ("identity", "right 1 px", "left 1 px", "down 1 px", "up 1 px")


def shifted_copies(images: torch.Tensor, shifts: tuple[tuple[int, int], ...] = TTA_SHIFTS) -> torch.Tensor:
    """uint8 (B, 28, 28) -> (len(shifts) * B, 28, 28): every image moved by each (dy, dx), zeros filled in.

    One pad and one strided view per shift for the whole batch (no per-image work); copy ``k`` of image ``b``
    is row ``k * B + b``.
    """
    reach = max(max(abs(dy), abs(dx)) for dy, dx in shifts)
    height, width = int(images.shape[-2]), int(images.shape[-1])
    padded = F.pad(images, (reach, reach, reach, reach))  # zero padding works on uint8 tensors
    # out[y, x] = in[y - dy, x - dx] = padded[y - dy + reach, x - dx + reach]
    views = [padded[:, reach - dy:reach - dy + height, reach - dx:reach - dx + width] for dy, dx in shifts]
    return torch.cat(views)


def predict_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | str | None = None,
    precision: Precision | str = "fp32",
    tta: bool = False,
) -> torch.Tensor:
    """Logits (N, classes) float32 for uint8 images (N, 28, 28), in batches of ``batch_size``, in eval mode.

    ``precision="bf16"`` runs under bf16 autocast, as a bf16-trained model was trained and scored. Uses
    inference mode and leaves a model that is already in eval mode untouched, so it is cheap for one image
    and safe to call from several threads at once (the server does). ``tta``: test-time augmentation, the
    returned logits are ``log(mean softmax)`` over the image and its :data:`TTA_SHIFTS` copies (a batch then
    holds ``batch_size // len(TTA_SHIFTS)`` images, so the memory per forward pass stays the same).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    images = as_uint8_tensor(images, device)
    channels_last = is_convolutional(model)
    was_training = model.training
    step = max(1, batch_size // len(TTA_SHIFTS)) if tta else batch_size

    def score(batch: torch.Tensor) -> torch.Tensor:
        if not tta:
            return model(prepare_batch(batch, channels_last=channels_last)).float()
        copies = model(prepare_batch(shifted_copies(batch), channels_last=channels_last)).float()
        logs = F.log_softmax(copies, dim=1).reshape(len(TTA_SHIFTS), int(batch.shape[0]), int(copies.shape[1]))
        return torch.logsumexp(logs, dim=0) - math.log(len(TTA_SHIFTS))

    if was_training:
        model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                                     enabled=precision == "bf16"):
            # max(N, 1): an empty input still runs one empty batch, so the result has the right width.
            chunks = [score(images[i:i + step]) for i in range(0, max(int(images.shape[0]), 1), step)]
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

    def logits(self, images: np.ndarray | torch.Tensor, *, batch_size: int = EVAL_BATCH_SIZE,
               tta: bool = False) -> torch.Tensor:
        """float32 logits (N, classes) for uint8 images (N, 28, 28) (``tta``: see :func:`predict_logits`)."""
        return predict_logits(self.model, images, batch_size=batch_size, device=self.device,
                              precision=self.precision, tta=tta)


def load_network(run_dir: Any, *, device: str = "auto", weights: str = "last") -> LoadedNetwork:
    """Load a network run for scoring, in the precision it was trained in (resolved for ``device``), with its
    ``weights`` (last, best or auto: :func:`mnistlab.runs.read_run`)."""
    torch_device = resolve_device(device)
    model, run = load_trained_model(run_dir, device=torch_device, weights=weights)
    precision, _ = resolve_precision(str(run.model.get("precision", "fp32")), torch_device)
    return LoadedNetwork(model=model, run=run, device=torch_device, precision=precision)
