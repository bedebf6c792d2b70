"""Peer implementations measured side by side with mnistlab: what a careful user writes in plain PyTorch.

Nothing here imports mnistlab. The models are the same architectures; the loop is the textbook one
(float tensors prepared up front, ``DataLoader(shuffle=True)``, conv -> ReLU -> pool in the usual order).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def seed_model(name: str) -> nn.Module:
    """The seed tutorial's three models, written the usual PyTorch way."""
    if name == "softmax":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                             nn.Linear(100, 10))
    if name == "cnn":
        return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 10))
    raise KeyError(name)


def public_one_epoch_model() -> nn.Module:
    """The best-known public one-epoch MNIST recipe's network (conv5x5-24, pool, conv3x3-32, pool, fc256)."""
    return nn.Sequential(nn.Conv2d(1, 24, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(24, 32, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 5 * 5, 256), nn.ReLU(), nn.Linear(256, 10))


@dataclass(frozen=True)
class PeerRun:
    epoch_seconds: list[float]
    test_accuracy: float


def to_float(images: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [0, 1], prepared once up front as tutorials do."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


def train_peer(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, *, epochs: int, batch_size: int, seed: int,
               scheduler_factory=None, bf16: bool = False, channels_last: bool = False) -> PeerRun:
    """The textbook loop; optional bf16 autocast and channels-last are the two well-known eager speed-ups."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=generator)
    scheduler = scheduler_factory(optimizer, epochs * math.ceil(len(x) / batch_size)) if scheduler_factory else None
    times = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for xb, yb in loader:
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        times.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        correct = sum(int((model(x_test[i:i + 1000]).argmax(1) == y_test[i:i + 1000]).sum())
                      for i in range(0, len(x_test), 1000))
    return PeerRun(epoch_seconds=times, test_accuracy=correct / len(x_test))


def keras_rmsprop(params) -> torch.optim.Optimizer:
    """RMSprop with Keras' defaults, so the peer trains the same recipe as mnistlab.

    torch's RMSprop divides by ``sqrt(v) + eps``, the tutorial's (tf.keras 2.x ``optimizer_v2``) rule, not Keras 3's
    ``sqrt(v + eps)``; tests/test_optim.py checks this function against the recorded tf_keras trajectory.
    """
    return torch.optim.RMSprop(params, lr=1e-3, alpha=0.9, eps=1e-7)
