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
schedules and checkpoints are untouched. Every buffer a step writes (its gathered uint8 rows, activations,
gradients) is allocated once per epoch; loss and predictions are written to per-epoch buffers and summed
only when read (no device sync per step).

It reproduces the autograd path (:func:`mnistlab.training._train_epoch_autograd`, the oracle, which
tests/test_fastpath.py compares it against): the same shuffle, the same batches, the same arithmetic up to
the order of floating-point sums. Under bf16 it mirrors autocast: inputs, weights and biases cast to bf16 for
the products, softmax cross-entropy in fp32, each gradient cast back to fp32 for the fp32 master weights.
Anything else (convolutions, augmentation, data-parallel training, frozen parameters) goes through autograd:
:func:`dense_layers` says None and the caller falls back.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    """One epoch over ``images`` (N, 28, 28) uint8 (the batch buffers are uint8) and ``labels`` (N,) in the
    shuffled ``order``; returns the epoch's (mean loss, accuracy) as the autograd loop reports them.
    ``on_step(step, steps, running)`` is called after every optimizer step (1-based ``step``), as
    :meth:`Callback.on_step`."""
    layers = net.layers
    device = images.device
    n = int(order.shape[0])
    steps = -(-n // batch_size)
    classes = layers[-1].out_features
    compute = torch.bfloat16 if bf16 else torch.float32
    pixels = images.reshape(images.shape[0], -1)                                     # (N, 784) uint8, a view
    # Each step gathers its own rows into a reused buffer: gathering the whole epoch up front wrote and then
    # re-read 47 MB (35 ms an epoch here, a fifth of the softmax layer's epoch) for 0.16 MB a step.
    targets = labels.index_select(0, order)                                          # (N,)
    smooth = float(label_smoothing)
    q_t = torch.full((classes, n), smooth / classes, device=device)
    q_t.scatter_(0, targets.unsqueeze(0), 1.0 - smooth + smooth / classes)           # (K, N) smoothed one-hot
    losses = torch.zeros(steps, device=device)        # each step's sum of q * log p (the loss, negated)
    predictions = torch.empty(n, dtype=torch.long, device=device)
    meter = EpochMeans(losses, predictions, targets)
    # Every buffer a step's own kernels write is allocated here, once (a second set for a smaller last batch),
    # so a step only dispatches kernels into them (the optimizer's step still allocates its temporaries).
    # Under bf16 the weights are cast into one bf16 copy per step and the products' gradients land in bf16
    # before one cast to the fp32 master gradient, as under autocast.
    last_rows = n - (steps - 1) * batch_size
    full = _StepBuffers(layers, batch_size, compute, device)
    tail = full if last_rows == batch_size else _StepBuffers(layers, last_rows, compute, device)
    last = len(layers) - 1
    flat = FlatStep(optimizer, [p for layer in layers for p in (layer.weight, layer.bias)])
    try:  # from here on the parameters are views into flat's tensors: close() must run, whatever fails
        cast = torch.empty_like(flat.flat, dtype=compute) if bf16 else flat.flat
        low_grad = torch.empty_like(flat.flat_grad, dtype=compute) if bf16 else flat.flat_grad
        cast_views, grad_views = _views(cast, flat.params), _views(low_grad, flat.params)
        weights, biases = cast_views[0::2], cast_views[1::2]
        weight_grads, bias_grads = grad_views[0::2], grad_views[1::2]
        with torch.no_grad(), _denormals_flushed():
            for step in range(steps):
                start = step * batch_size
                stop = min(start + batch_size, n)
                rows = stop - start
                b = full if rows == batch_size else tail
                torch.index_select(pixels, 0, order[start:stop], out=b.raw)
                # The same scaling as models.prepare_batch (a division, not a multiplication by 1/255); under
                # bf16 written straight into the product's dtype, as autocast's cast of the fp32 quotient.
                torch.div(b.raw, 255.0, out=b.activations[0])
                if bf16:  # autocast's casts: every product's operands in bf16, all weights in one cast
                    cast.copy_(flat.flat)
                for i in range(last):
                    torch.addmm(biases[i], b.activations[i], weights[i].t(), out=b.activations[i + 1]).relu_()
                # The loss and its gradient are computed class-major, (K, B): log_softmax over 10 classes is
                # 2-5 us along dim 0 of that layout against 31-43 us along dim 1 of (B, K) on one thread.
                # argmax is the other way round, so it reads the (B, K) logits.
                if bf16:
                    torch.addmm(biases[last], b.activations[last], weights[last].t(), out=b.low_logits)
                    torch.argmax(b.low_logits, dim=1, out=predictions[start:stop])  # fp32 widening keeps order
                    b.logits_t.copy_(b.low_logits.t())
                elif last == 0:
                    # The softmax layer: (W x^T) + b, addmm(b, x, W^T)'s operations (the products summed, then
                    # the bias added) as a K x B product, which MKL runs in half the time of the B x K one when
                    # K is 10 (34 against 70 us for a batch of 128 on one thread). Only the order of the sums
                    # differs. Hidden layers' outputs keep addmm, the call autograd makes: a K x B output layer
                    # in the MLP drifted 1.2e-6 from the oracle and failed its fp32 test (atol 1e-6, rtol 1e-5).
                    torch.mm(weights[last], b.activations[last].t(), out=b.products_t)
                    torch.add(b.products_t, biases[last].unsqueeze(1), out=b.logits_t)
                    torch.argmax(b.logits.copy_(b.logits_t.t()), dim=1, out=predictions[start:stop])
                else:
                    torch.addmm(biases[last], b.activations[last], weights[last].t(), out=b.logits)
                    torch.argmax(b.logits, dim=1, out=predictions[start:stop])
                    b.logits_t.copy_(b.logits.t())
                logp_t = torch._log_softmax(b.logits_t, 0, False, out=b.logp_t)
                q_step = q_t[:, start:stop]
                torch.sum(torch.mul(q_step, logp_t, out=b.weighted_t), dim=(0, 1), out=losses[step])
                # d(mean CE)/dz = (softmax - q) / B, in fp32 as autocast's cross-entropy computes it.
                grad_t = logp_t.exp_().sub_(q_step).div_(rows)                          # (K, B)
                if bf16:
                    grad_t = b.low_grad_t.copy_(grad_t)
                # The output layer from the class-major gradient, then the hidden layers batch-major.
                torch.mm(grad_t, b.activations[last], out=weight_grads[last])
                torch.sum(grad_t, dim=1, out=bias_grads[last])
                grad = grad_t.t()
                for i in range(last, 0, -1):
                    below = b.activations[i]
                    # ReLU's backward (what autograd runs): zero where the ReLU's output is 0.
                    back = torch.mm(grad, weights[i], out=b.backs[i - 1])
                    grad = torch.ops.aten.threshold_backward.grad_input(back, below, 0, grad_input=b.relu_grads[i - 1])
                    torch.mm(grad.t(), b.activations[i - 1], out=weight_grads[i - 1])
                    torch.sum(grad, dim=0, out=bias_grads[i - 1])
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


@contextmanager
def _denormals_flushed() -> Iterator[None]:
    """The CPU's flush-to-zero mode for the calling thread while inside (when torch runs on one thread), then
    the mode as it was.

    Why: RMSprop's running squares decay by rho every step, so those of rarely lit pixels' weights sink into
    denormal floats, on which the CPU takes a microcode assist for every operation. After three MLP epochs
    about 900 of them made the step's square root 1.4x slower (90 against 63 us) and the next epoch 12%
    slower than a flushed one (0.342 against 0.306 s, the 2-core AMD EPYC). Flushed, those values are 0 and
    the updates do not change: sqrt(v) of a denormal v is at most 1.1e-19, which eps = 1e-7 absorbs.
    TensorFlow runs its kernels flushed (tensorflow/core/platform/denormal.h, set in its CPU thread pools'
    threads), so the tutorial's Keras code trains this way too.

    The mode belongs to a thread: torch's intra-op (OpenMP) workers keep theirs, so with more than one thread
    only part of the work would be flushed, and the epoch then runs as it would without this. The dense
    models' recipes train on one thread, the calling one. A Python thread started inside inherits the mode
    for its life. torch sets flush-to-zero and denormals-are-zero together, so restoring sets both to what
    :func:`_flushing_denormals` found for flush-to-zero.
    """
    if torch.get_num_threads() != 1:
        yield
        return
    was = _flushing_denormals()
    if not torch.set_flush_denormal(True):  # the CPU has no such mode (returns False): nothing to restore
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(was)


def _flushing_denormals() -> bool:
    """Whether this thread flushes denormals now: torch can set the mode but not report it, so test it."""
    smallest_normal = torch.tensor(torch.finfo(torch.float32).tiny)
    return bool((smallest_normal / 2).item() == 0.0)


class _StepBuffers:
    """What one step of :func:`train_epoch` writes for a batch of ``rows``: the gathered uint8 rows, each
    layer's input (the images first), each hidden layer's input gradient, and the logits (under bf16 also in
    bf16, as autocast's product leaves them, and their gradient cast to bf16)."""

    def __init__(self, layers: tuple[nn.Linear, ...], rows: int, compute: torch.dtype,
                 device: torch.device) -> None:
        classes = layers[-1].out_features
        self.raw = torch.empty((rows, layers[0].in_features), dtype=torch.uint8, device=device)
        self.activations = [torch.empty((rows, layer.in_features), dtype=compute, device=device)
                            for layer in layers]
        self.backs = [torch.empty((rows, layer.in_features), dtype=compute, device=device) for layer in layers[1:]]
        self.relu_grads = [torch.empty_like(back) for back in self.backs]
        self.logits = torch.empty((rows, classes), device=device)
        self.products_t = torch.empty((classes, rows), device=device)
        self.logits_t = torch.empty((classes, rows), device=device)
        self.logp_t = torch.empty((classes, rows), device=device)
        self.weighted_t = torch.empty((classes, rows), device=device)
        self.low_logits = torch.empty((rows, classes), dtype=compute, device=device)
        self.low_grad_t = torch.empty((classes, rows), dtype=compute, device=device)


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
        # Last, once everything that can fail (allocations) has succeeded: the model now sees the flat views,
        # and only close() gives each parameter its own storage back.
        for param, view in zip(params, self.params, strict=True):
            param.data = view

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
