"""Independent oracles for the seed's networks: weights read straight from a safetensors file with numpy, and a
plain fp32 forward written out with torch.nn.functional, in the Keras tutorial's layer order.

Nothing here goes through mnistlab (no build_model, prepare_batch, predict_logits, channels-last, autocast), so a
test comparing mnistlab's output with these functions cannot pass because both sides share a bug.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, parsed by hand: u64 header length, JSON header, raw little-endian data."""
    raw = Path(path).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    data = raw[8 + header_len:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        tensors[name] = torch.from_numpy(array.copy())
    return tensors


def plain_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> contiguous float32 (N, 1, 28, 28) in [0, 1], as Keras' ``x / 255``."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / np.float32(255.0))[:, None].contiguous()


def cnn_logits(weights: dict[str, torch.Tensor], images: np.ndarray) -> torch.Tensor:
    """The tutorial's convnet, Keras order (conv -> ReLU -> pool), fp32, NCHW, from named weights.

    Keys follow mnistlab's Sequential numbering (0, 3, 6 convs; 9 the dense layer); the layer order and
    shapes are the tutorial's, written out here rather than taken from mnistlab.
    """
    x = plain_input(images)
    with torch.no_grad():
        x = F.max_pool2d(F.relu(F.conv2d(x, weights["0.weight"], weights["0.bias"])), 2)   # (N, 32, 13, 13)
        x = F.max_pool2d(F.relu(F.conv2d(x, weights["3.weight"], weights["3.bias"])), 2)   # (N, 64, 5, 5)
        x = F.relu(F.conv2d(x, weights["6.weight"], weights["6.bias"]))                    # (N, 64, 3, 3)
        return F.linear(x.flatten(1), weights["9.weight"], weights["9.bias"])             # (N, 10)
