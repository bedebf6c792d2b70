"""A hand-written training epoch for the dense models (softmax layer, MLP): the same function, less overhead.

Why: the softmax layer and the MLP do a few hundred kFLOP per image, so an epoch of 469 or 300 steps is
dominated by what surrounds the arithmetic: the autograd graph (recorded and freed every step), about 40
operator dispatches, fresh allocations for every activation and gradient, a gather and a float conversion per
batch, and per-step bookkeeping. Here each step is the chain rule written out as matrix products into buffers
allocated once per epoch:

    forward   z_i = a_{i-1} W_i^T + b_i,   a_i = relu(z_i),   logp = log_softmax(z_L)
    loss      -sum(q * logp) / B, with q the (smoothed) one-hot targets
    backward  dz_L = (softmax(z_L) - q) / B;  dW_i = dz_i^T a_{i-1};  db_i = sum(dz_i);
              dz_{i-1} = (dz_i W_i) * [a_{i-1} > 0]

The gradients land in each parameter's ``.grad`` and the run's own optimizer takes the step, so its state,
schedules and checkpoints are untouched. The epoch's shuffled images are gathered once; loss and predictions
are written to per-epoch buffers and summed only when read (no device sync per step).

It reproduces the autograd path (:func:`mnistlab.training._train_epoch_autograd`, the oracle, which
tests/test_fastpath.py compares it against): the same shuffle, the same batches, the same arithmetic up to
the order of floating-point sums. Under bf16 it mirrors autocast: inputs, weights and biases cast to bf16 for
the products, softmax cross-entropy in fp32, each gradient cast back to fp32 for the fp32 master weights.
Anything else (convolutions, augmentation, data-parallel training, frozen parameters) goes through autograd:
:func:`dense_layers` says None and the caller falls back.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mnistlab.optim import Optimizer, Schedule


@dataclass(frozen=True)
class DenseNet:
    """The linear layers of a ``Flatten, (Linear, ReLU)*, Linear`` network, in order."""

    layers: tuple[nn.Linear, ...]


def dense_layers(model: nn.Module, optimizer: Optimizer) -> DenseNet | None:
    """The dense network ``model`` is, or None when it is anything else (then train it through autograd).

    Accepted: an ``nn.Sequential`` of exactly ``Flatten()``, then Linear layers (with biases) with a ReLU between
    each pair, every parameter trainable and held by ``optimizer`` in the model's order, whose buffers are all
    created or all not yet. This is the seed's softmax layer and MLP, and any registered model of that shape.
    """
    if type(model) is not nn.Sequential:
        return None
    modules = list(model)
    if len(modules) < 2 or type(modules[0]) is not nn.Flatten:
        return None
    flatten = modules[0]
    if flatten.start_dim != 1 or flatten.end_dim != -1:
        return None
    body = modules[1:]
    if len(body) % 2 == 0:  # Linear (ReLU Linear)*: an odd count
        return None
    layers: list[nn.Linear] = []
    for position, module in enumerate(body):
        expected = nn.Linear if position % 2 == 0 else nn.ReLU
        if type(module) is not expected:
            return None
        if isinstance(module, nn.Linear):
            layers.append(module)
    if any(not p.requires_grad for p in model.parameters()):
        return None
    if any(layer.bias is None for layer in layers):
        return None
    if [id(p) for p in optimizer.params] != [id(p) for p in model.parameters()]:
        return None
    for name in optimizer.BUFFERS:
        created = {buffer is not None for buffer in getattr(optimizer, name)}
        if len(created) > 1:
            return None
    return DenseNet(layers=tuple(layers))


class EpochMeans:
    """The running loss and accuracy of an epoch, from per-step buffers summed on demand (one sync per read)."""

    def __init__(self, losses: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        self.losses = losses            # (steps,) fp32: each step's sum of q * log p, minus its summed loss
        self.predictions = predictions  # (N,) int64: each image's argmax, in epoch order
        self.targets = targets          # (N,) int64: the labels in the same order
        self.steps_done = 0
        self.seen = 0

    def read(self) -> tuple[float, float]:
        """(mean loss, accuracy) over the images trained on so far this epoch."""
        seen = max(self.seen, 1)
        loss = -float(self.losses[:self.steps_done].sum().item())
        correct = int((self.predictions[:self.seen] == self.targets[:self.seen]).sum().item())
        return loss / seen, correct / seen


def train_epoch(net: DenseNet, *, optimizer: Optimizer, schedule: Schedule | None, images: torch.Tensor,
                labels: torch.Tensor, order: torch.Tensor, batch_size: int, label_smoothing: float,
                bf16: bool, on_step: Callable[[int, int, Callable[[], tuple[float, float]]], None]
                ) -> tuple[float, float]:
    """One epoch over ``images`` (N, 28, 28) uint8 and ``labels`` (N,) in the shuffled ``order``; returns the
    epoch's (mean loss, accuracy) as the autograd loop reports them. ``on_step(step, steps, running)`` is
    called after every optimizer step (1-based ``step``), as :meth:`Callback.on_step`."""
    layers = net.layers
    device = images.device
    n = int(order.shape[0])
    steps = -(-n // batch_size)
    classes = layers[-1].out_features
    compute = torch.bfloat16 if bf16 else torch.float32
    # The epoch's data in training order, gathered once: uint8 images (47 MB for all of MNIST's) and the
    # smoothed one-hot targets (N x classes fp32).
    # index_select copies whole rows: 2.5x faster here than advanced indexing of the (N, 28, 28) tensor.
    shuffled = images.reshape(images.shape[0], -1).index_select(0, order)            # (N, 784) uint8
    targets = labels.index_select(0, order)                                          # (N,)
    smooth = float(label_smoothing)
    q = torch.full((n, classes), smooth / classes, device=device)
    q.scatter_(1, targets.unsqueeze(1), 1.0 - smooth + smooth / classes)             # (N, K)
    losses = torch.zeros(steps, device=device)        # each step's sum of q * log p (the loss, negated)
    predictions = torch.empty(n, dtype=torch.long, device=device)
    meter = EpochMeans(losses, predictions, targets)
    flat = FlatStep(optimizer, [p for layer in layers for p in (layer.weight, layer.bias)])
    weights, biases = flat.params[0::2], flat.params[1::2]
    weight_grads, bias_grads = flat.grads[0::2], flat.grads[1::2]
    x = torch.empty(batch_size, shuffled.shape[1], device=device)
    low_grad = torch.empty_like(flat.flat_grad, dtype=compute)  # bf16: the products' gradients, before the cast
    low = _views(low_grad, flat.params)
    low_weight_grads, low_bias_grads = low[0::2], low[1::2]
    try:
        with torch.no_grad():
            for step in range(steps):
                start = step * batch_size
                stop = min(start + batch_size, n)
                rows = stop - start
                # The same scaling as models.prepare_batch (a division, not a multiplication by 1/255).
                inputs = torch.div(shuffled[start:stop], 255.0, out=x[:rows])
                if bf16:  # autocast's casts: every product's operands in bf16, all weights in one cast
                    cast = _views(flat.flat.to(compute), flat.params)
                    w_c, b_c = cast[0::2], cast[1::2]
                    activations = [inputs.to(compute)]
                    for i, (w, b) in enumerate(zip(w_c, b_c, strict=True)):
                        activations.append(torch.addmm(b, activations[-1], w.t()))
                        if i < len(w_c) - 1:
                            activations[-1].relu_()
                else:
                    w_c = weights
                    activations = [inputs]
                    for i, (w, b) in enumerate(zip(w_c, biases, strict=True)):
                        activations.append(torch.addmm(b, activations[-1], w.t()))
                        if i < len(w_c) - 1:
                            activations[-1].relu_()
                logits = activations.pop().float()
                logp = torch.log_softmax(logits, dim=1)
                q_step = q[start:stop]
                torch.argmax(logits, dim=1, out=predictions[start:stop])
                torch.dot(q_step.view(-1), logp.view(-1), out=losses[step])
                # d(mean CE)/dz = (softmax - q) / B, in fp32 as autocast's cross-entropy computes it.
                grad = logp.exp_().sub_(q_step).div_(rows)
                if bf16:
                    grad = grad.to(compute)
                for i in range(len(w_c) - 1, -1, -1):
                    below = activations[i]
                    if bf16:  # products in bf16, then cast to the fp32 master gradient (autograd's ToCopy)
                        torch.mm(grad.t(), below, out=low_weight_grads[i])
                        torch.sum(grad, dim=0, out=low_bias_grads[i])
                    else:
                        torch.mm(grad.t(), below, out=weight_grads[i])
                        torch.sum(grad, dim=0, out=bias_grads[i])
                    if i:
                        # ReLU's backward (what autograd runs): zero where the ReLU's output is 0.
                        grad = torch.ops.aten.threshold_backward(torch.mm(grad, w_c[i]), below, 0)
                if bf16:
                    flat.flat_grad.copy_(low_grad)  # every gradient to fp32 in one cast
                flat.step()
                if schedule is not None:
                    schedule.step()
                meter.steps_done, meter.seen = step + 1, stop
                on_step(step + 1, steps, meter.read)
    finally:
        flat.close()
    return meter.read()


class FlatStep:
    """The optimizer's update over all parameters at once: parameters, gradients and the optimizer's buffers
    copied into one flat tensor each for the epoch, so each of its ``_foreach`` ops is a single kernel instead of
    one per tensor (6 for the MLP). Element-wise, so the numbers are exactly those of per-tensor steps.

    During the epoch every parameter's ``.data`` is a view into the flat tensor (the model sees live weights);
    :meth:`close` copies everything back into the original tensors and buffers.
    """

    def __init__(self, optimizer: Optimizer, params: list[torch.Tensor]) -> None:
        if [id(p) for p in optimizer.params] != [id(p) for p in params]:  # dense_layers checked it
            raise ValueError("the optimizer's parameters are not the dense layers' weights and biases")
        self.optimizer = optimizer
        self.originals = [p.data for p in params]
        self.flat = torch.cat([p.detach().reshape(-1) for p in params])
        self.flat_grad = torch.zeros_like(self.flat)
        self.params = _views(self.flat, params)
        self.grads = _views(self.flat_grad, params)
        self.parameters = params
        for param, view in zip(params, self.params, strict=True):
            param.data = view
        self.flat.grad = self.flat_grad
        # A shallow copy of the optimizer whose one "parameter" is the flat tensor; its numbers (lr, step count,
        # betas, which schedules change) are taken from the real one before every step.
        self.shadow = copy.copy(optimizer)
        self.shadow.params = [self.flat]  # type: ignore[list-item]
        self.buffers: dict[str, torch.Tensor | None] = {}
        for name in optimizer.BUFFERS:
            real = getattr(optimizer, name)
            flat_buffer = None if all(b is None for b in real) else torch.cat([b.reshape(-1) for b in real])
            self.buffers[name] = flat_buffer
            setattr(self.shadow, name, [flat_buffer])

    def step(self) -> None:
        """One optimizer step on the flat tensors."""
        for key in self.optimizer.SCALARS:
            setattr(self.shadow, key, getattr(self.optimizer, key))
        self.shadow.step()
        self.optimizer.steps = self.shadow.steps

    def close(self) -> None:
        """Copy weights and optimizer state back where the optimizer and the model keep them."""
        with torch.no_grad():
            for param, original, view in zip(self.parameters, self.originals, self.params, strict=True):
                original.copy_(view)
                param.data = original
            for name in self.optimizer.BUFFERS:
                flat_buffer = getattr(self.shadow, name)[0]
                if flat_buffer is None:
                    continue
                real = getattr(self.optimizer, name)
                for i, view in enumerate(_views(flat_buffer, self.parameters)):
                    if real[i] is None:
                        real[i] = view.clone()
                    else:
                        real[i].copy_(view)


def _views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """``flat`` cut into consecutive views shaped as the tensors of ``like``."""
    views, offset = [], 0
    for tensor in like:
        size = tensor.numel()
        views.append(flat[offset:offset + size].view_as(tensor))
        offset += size
    return views
