"""Which pixels drove a decision: input-gradient saliency (Simonyan et al. 2014) for torch networks.

For each image, the gradient of the predicted class's log-probability with respect to the 28x28 input, taken
in absolute value and scaled so each map's largest pixel is 1 (an all-zero gradient stays all zero). One
backward pass per batch, in fp32 (a bf16 run's autocast is left off: gradients in bf16 are too coarse to show).

The onnx backend has no gradients; it offers no saliency (an occlusion map would cost 49+ forward passes per
image for a coarser picture, so it is not attempted).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mnistlab.models import is_convolutional, prepare_batch


def input_gradient_saliency(model: nn.Module, images: np.ndarray, *, classes: Any = None,
                            device: torch.device | str | None = None) -> np.ndarray:
    """float64 (N, 28, 28) saliency maps in [0, 1] for uint8 ``images`` (N, 28, 28).

    ``classes``: the class whose log-probability is differentiated, per image; default the predicted class.
    The model is left in the mode it was in; its parameters get no gradients.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    pixels = torch.tensor(np.asarray(images), device=device)  # a copy: the dataset's arrays are read-only
    if pixels.ndim == 2:
        pixels = pixels[None]
    if len(pixels) == 0:
        return np.zeros((0, 28, 28), np.float64)
    batch = prepare_batch(pixels, channels_last=is_convolutional(model)).detach().requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
            log_probs = torch.log_softmax(model(batch).float(), dim=1)
            chosen = (log_probs.argmax(dim=1) if classes is None
                      else torch.as_tensor(np.asarray(classes), device=device).long().reshape(-1))
            # Each image's output depends only on its own input (eval mode), so one backward of the sum gives
            # every image's own gradient.
            picked = log_probs.gather(1, chosen[:, None]).sum()
            (grad,) = torch.autograd.grad(picked, batch)
    finally:
        if was_training:
            model.train()
    maps = grad.detach().abs().reshape(len(pixels), 28, 28).double().cpu().numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1)
    return np.divide(maps, peak[:, None, None], out=np.zeros_like(maps), where=peak[:, None, None] > 0)
