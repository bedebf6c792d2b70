"""Optimizers and learning-rate schedules, with Keras' defaults, as a few fused (``_foreach``) tensor ops.

Why not ``torch.optim``: constructing its first optimizer imports ``torch._dynamo`` (1.5 s here, a quarter
of ``mnistlab train fast``), and every ``step()`` passes through dynamo's disable wrapper. The updates below
are the textbook formulas; tests check them against the formulas and against ``torch.optim`` step by step.

Schedules: one-cycle and cosine (per step), step decay and reduce-on-plateau (per epoch); each checked
against its ``torch.optim.lr_scheduler`` counterpart, and each with a JSON state for the checkpoint.

All three optimizers keep their state in fp32 next to fp32 parameters (bf16 autocast only changes the forward/backward
arithmetic), and skip parameters whose gradient is None.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch


class Optimizer:
    """The small interface :func:`mnistlab.training.fit` needs: ``step()``, ``zero_grad()``, a mutable ``lr``."""

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr = lr
        self.steps = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (the next backward pass allocates fresh ones)."""
        for param in self.params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        chosen = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not chosen:
            return
        self.steps += 1
        self._update([self.params[i].data for i in chosen], [self.params[i].grad for i in chosen], chosen)  # type: ignore[misc]

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor], chosen: list[int]) -> None:
        """Apply the rule to ``params`` (the parameters at positions ``chosen``) given their ``grads``."""
        raise NotImplementedError

    # What a checkpoint needs: every per-parameter buffer (tensors) and every number (JSON).
    SCALARS: tuple[str, ...] = ("lr", "steps")
    BUFFERS: tuple[str, ...] = ()
    # Numbers a checkpoint written before they existed lacks, with the value that reproduces that version.
    ADDED_SCALARS: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, scalars): ``BUFFER.i`` -> contiguous CPU copy (absent for a buffer not created yet), and
        the rule's numbers (lr, step count, betas...), so that :meth:`load_state_dict` continues exactly."""
        tensors: dict[str, torch.Tensor] = {}
        for name in self.BUFFERS:
            for i, buffer in enumerate(getattr(self, name)):
                if buffer is not None:
                    tensors[f"{name}.{i}"] = buffer.detach().to("cpu").contiguous().clone()
        scalars = {"class": type(self).__name__, **{key: getattr(self, key) for key in self.SCALARS}}
        return tensors, scalars

    def load_state_dict(self, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; a buffer keeps its parameter's device and memory layout."""
        if scalars.get("class") != type(self).__name__:
            raise ValueError(f"optimizer state of {scalars.get('class')}, not {type(self).__name__}")
        expected = {f"{name}.{i}" for name in self.BUFFERS for i in range(len(self.params))}
        if not set(tensors) <= expected:
            raise ValueError(f"unexpected optimizer tensors {sorted(set(tensors) - expected)[:3]}")
        for name in self.BUFFERS:
            buffers = getattr(self, name)
            for i, param in enumerate(self.params):
                saved = tensors.get(f"{name}.{i}")
                if saved is None:
                    if buffers[i] is not None:
                        raise ValueError(f"optimizer tensor {name}.{i} is missing")
                    continue
                if tuple(saved.shape) != tuple(param.shape):
                    raise ValueError(f"optimizer tensor {name}.{i} has shape {tuple(saved.shape)}")
                target = torch.empty_like(param) if buffers[i] is None else buffers[i]
                buffers[i] = target.copy_(saved)
        for key in self.SCALARS:
            value = scalars[key] if key in scalars or key not in self.ADDED_SCALARS else self.ADDED_SCALARS[key]
            setattr(self, key, type(getattr(self, key))(value))


class KerasRMSprop(Optimizer):
    """``v = rho v + (1 - rho) g^2;  w -= lr g / (sqrt(v) + eps)`` with Keras' rho 0.9 and eps 1e-7.

    (``torch.optim.RMSprop``'s defaults, alpha 0.99 and eps 1e-8, are not Keras'.)
    """

    SCALARS = ("lr", "steps", "rho", "eps")
    BUFFERS = ("square_avg",)

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float = 1e-3, rho: float = 0.9,
                 eps: float = 1e-7) -> None:
        super().__init__(params, lr=lr)
        self.rho, self.eps = rho, eps
        self.square_avg = [torch.zeros_like(p) for p in self.params]

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor], chosen: list[int]) -> None:
        squares = [self.square_avg[i] for i in chosen]
        torch._foreach_mul_(squares, self.rho)
        torch._foreach_addcmul_(squares, grads, grads, value=1.0 - self.rho)
        denominators = torch._foreach_sqrt(squares)
        torch._foreach_add_(denominators, self.eps)
        torch._foreach_addcdiv_(params, grads, denominators, value=-self.lr)


class Adam(Optimizer):
    """Adam with bias correction; ``eps`` 1e-7 as in Keras. ``beta1`` may be changed between steps (the
    one-cycle schedule cycles it), with the bias correction using the current value, as ``torch.optim`` does.

    ``weight_decay`` > 0 makes it AdamW (Loshchilov & Hutter, as ``torch.optim.AdamW``): before each update every
    weight shrinks by ``lr * weight_decay`` of itself, outside the gradient, so the decay is not rescaled by the
    adaptive denominators (L2 added to the loss would be) and follows the schedule's current ``lr``.
    """

    SCALARS = ("lr", "steps", "beta1", "beta2", "eps", "weight_decay")
    BUFFERS = ("exp_avg", "exp_avg_sq")
    ADDED_SCALARS = MappingProxyType({"weight_decay": 0.0})

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-7, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.weight_decay = float(weight_decay)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor], chosen: list[int]) -> None:
        if self.weight_decay:
            torch._foreach_mul_(params, 1.0 - self.lr * self.weight_decay)  # w -= lr wd w, first (torch's order)
        means = [self.exp_avg[i] for i in chosen]
        squares = [self.exp_avg_sq[i] for i in chosen]
        torch._foreach_lerp_(means, grads, 1.0 - self.beta1)           # m = b1 m + (1 - b1) g
        torch._foreach_mul_(squares, self.beta2)
        torch._foreach_addcmul_(squares, grads, grads, value=1.0 - self.beta2)
        correction1 = 1.0 - self.beta1 ** self.steps
        correction2 = 1.0 - self.beta2 ** self.steps
        denominators = torch._foreach_sqrt(squares)
        torch._foreach_div_(denominators, math.sqrt(correction2))
        torch._foreach_add_(denominators, self.eps)
        torch._foreach_addcdiv_(params, means, denominators, value=-self.lr / correction1)


class SGDMomentum(Optimizer):
    """``buf = momentum buf + g;  w -= lr buf`` (the first step's buffer is the gradient itself)."""

    SCALARS = ("lr", "steps", "momentum")
    BUFFERS = ("buffers",)

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float = 1e-2, momentum: float = 0.9) -> None:
        super().__init__(params, lr=lr)
        self.momentum = momentum
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor], chosen: list[int]) -> None:
        for i, grad in zip(chosen, grads, strict=True):
            buffer = self.buffers[i]
            if buffer is None:
                self.buffers[i] = grad.detach().clone()
            else:
                buffer.mul_(self.momentum).add_(grad)
        torch._foreach_add_(params, [self.buffers[i] for i in chosen], alpha=-self.lr)  # type: ignore[misc]


def _cosine(start: float, end: float, fraction: float) -> float:
    """Cosine interpolation from ``start`` (fraction 0) to ``end`` (fraction 1)."""
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * fraction))


class Schedule:
    """What the training loop drives: :meth:`step` after every optimizer step, :meth:`epoch_end` after every
    epoch (with the figure a plateau watches), and a JSON state that a checkpoint saves and resume restores.

    Each schedule sets ``optimizer.lr`` itself, so the lr an epoch's history row shows is the one it trained with
    (per-step schedules: the lr after the epoch's last step)."""

    optimizer: Optimizer

    def step(self) -> None:
        """After each optimizer step (per-epoch schedules ignore it)."""

    def epoch_end(self, monitored: float) -> None:
        """After each epoch; ``monitored`` is its validation loss, or its training loss without a validation
        split (only the plateau schedule reads it)."""

    def state_dict(self) -> dict[str, Any]:
        """The schedule's position (JSON numbers)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output; the optimizer's lr is set from it."""
        raise NotImplementedError

    def _check_class(self, state: Any) -> dict[str, Any]:
        if not isinstance(state, dict) or state.get("class") != type(self).__name__:
            found = state.get("class") if isinstance(state, dict) else state
            raise ValueError(f"schedule state of {found}, not {type(self).__name__}")
        return state


class OneCycle(Schedule):
    """The one-cycle policy (Smith & Topin): learning rate up from ``max_lr / 25`` to ``max_lr`` over the first
    ``warmup`` fraction of the steps, then down to ``max_lr / 25e4``; Adam's beta1 moves the opposite way
    (0.95 -> 0.85 -> 0.95). Cosine in both phases. Matches ``torch.optim.lr_scheduler.OneCycleLR``'s defaults.

    Call :meth:`step` after each optimizer step, as with torch's schedulers.
    """

    def __init__(self, optimizer: Optimizer, *, max_lr: float, total_steps: int, warmup: float = 0.25,
                 div_factor: float = 25.0, final_div_factor: float = 1e4,
                 momentum_range: tuple[float, float] = (0.85, 0.95)) -> None:
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.initial_lr = max_lr / div_factor
        self.max_lr = max_lr
        self.min_lr = self.initial_lr / final_div_factor
        self.peak_step = float(warmup * total_steps) - 1.0
        self.last_step = float(total_steps - 1)
        self.low_momentum, self.high_momentum = momentum_range
        self.step_count = 0
        self._apply()

    def values(self, step: int) -> tuple[float, float]:
        """(learning rate, beta1) at ``step`` (0-based)."""
        if step <= self.peak_step:
            fraction = step / self.peak_step if self.peak_step > 0 else 1.0
            return (_cosine(self.initial_lr, self.max_lr, fraction),
                    _cosine(self.high_momentum, self.low_momentum, fraction))
        span = self.last_step - self.peak_step
        fraction = (step - self.peak_step) / span if span > 0 else 1.0
        return (_cosine(self.max_lr, self.min_lr, fraction),
                _cosine(self.low_momentum, self.high_momentum, fraction))

    def _apply(self) -> None:
        lr, momentum = self.values(self.step_count)
        self.optimizer.lr = lr
        if isinstance(self.optimizer, Adam):
            self.optimizer.beta1 = momentum
        elif isinstance(self.optimizer, SGDMomentum):
            self.optimizer.momentum = momentum

    def step(self) -> None:
        """Advance one step (clamped at the last step, so an extra call is harmless)."""
        self.step_count = min(self.step_count + 1, self.total_steps - 1)
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """The schedule's position and shape (JSON numbers)."""
        return {"class": "OneCycle", "step_count": self.step_count, "total_steps": self.total_steps,
                "max_lr": self.max_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s position (the optimizer's lr/beta1 are set from it)."""
        state = self._check_class(state)
        if state.get("total_steps") != self.total_steps or state.get("max_lr") != self.max_lr:
            raise ValueError(f"schedule state for {state.get('total_steps')} steps, not {self.total_steps}")
        self.step_count = int(state["step_count"])
        self._apply()


class CosineAnnealing(Schedule):
    """Cosine annealing from ``lr`` to ``min_lr`` over ``total_steps`` optimizer steps (the whole run), stepped
    per batch: ``min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2``, as ``CosineAnnealingLR(T_max=total_steps,
    eta_min=min_lr)``. torch's class computes the same curve recursively (each lr from the previous one); the
    closed form here has no accumulated round-off, so a resumed run needs only the step count. Past ``T`` it stays
    at ``min_lr`` (torch's would rise again: a run never steps past its end)."""

    def __init__(self, optimizer: Optimizer, *, lr: float, total_steps: int, min_lr: float = 0.0) -> None:
        self.optimizer = optimizer
        self.base_lr, self.total_steps, self.min_lr = lr, total_steps, min_lr
        self.step_count = 0
        self._apply()

    def value(self, step: int) -> float:
        """The learning rate after ``step`` optimizer steps."""
        return _cosine(self.base_lr, self.min_lr, min(step, self.total_steps) / max(self.total_steps, 1))

    def _apply(self) -> None:
        self.optimizer.lr = self.value(self.step_count)

    def step(self) -> None:
        """Advance one step (clamped at the end)."""
        self.step_count = min(self.step_count + 1, self.total_steps)
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Position and shape (JSON numbers)."""
        return {"class": "CosineAnnealing", "step_count": self.step_count, "total_steps": self.total_steps,
                "lr": self.base_lr, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s position; refuses another run's shape."""
        state = self._check_class(state)
        shape = (state.get("total_steps"), state.get("lr"), state.get("min_lr"))
        if shape != (self.total_steps, self.base_lr, self.min_lr):
            raise ValueError(f"cosine schedule state for (steps, lr, min_lr) {shape}, not "
                             f"{(self.total_steps, self.base_lr, self.min_lr)}")
        self.step_count = int(state["step_count"])
        self._apply()


class StepDecay(Schedule):
    """The learning rate times ``gamma`` every ``step_size`` epochs: ``lr gamma^(epoch // step_size)``, as
    ``StepLR(step_size, gamma)`` stepped once per epoch (its closed form; its recursive form multiplies the previous
    lr, which can differ in the last bit)."""

    def __init__(self, optimizer: Optimizer, *, lr: float, step_size: int, gamma: float) -> None:
        self.optimizer = optimizer
        self.base_lr, self.step_size, self.gamma = lr, step_size, gamma
        self.epochs_done = 0
        self._apply()

    def _apply(self) -> None:
        self.optimizer.lr = self.base_lr * self.gamma ** (self.epochs_done // self.step_size)

    def epoch_end(self, monitored: float) -> None:
        """One more epoch done: the next one trains at its stage's lr."""
        self.epochs_done += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Epochs done and the shape (JSON numbers)."""
        return {"class": "StepDecay", "epochs_done": self.epochs_done, "lr": self.base_lr,
                "step_size": self.step_size, "gamma": self.gamma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s epoch count; refuses another run's shape."""
        state = self._check_class(state)
        shape = (state.get("lr"), state.get("step_size"), state.get("gamma"))
        if shape != (self.base_lr, self.step_size, self.gamma):
            raise ValueError(f"step schedule state for (lr, step_size, gamma) {shape}")
        self.epochs_done = int(state["epochs_done"])
        self._apply()


class ReduceOnPlateau(Schedule):
    """Keras' ``ReduceLROnPlateau`` (mode min) on the figure :meth:`epoch_end` receives, with Keras' defaults.

    Keras' rule, per epoch (keras/src/callbacks/reduce_lr_on_plateau.py, the same in tf.keras 2.x):

    1. in cooldown (counter > 0): counter -= 1, wait = 0;
    2. an improvement (``value < best - min_delta``, absolute): best = value, wait = 0;
    3. otherwise, if no longer in cooldown: wait += 1, and once ``wait >= patience``, if ``lr > min_lr``:
       ``lr = max(lr * factor, min_lr)``, counter = cooldown, wait = 0.

    So ``patience`` non-improving epochs in a row cut the lr at the last of them (patience 0 acts as 1), and after
    a cut the next ``cooldown - 1`` epochs do not count (the cooldown's last epoch already does, because step 1
    ends the cooldown before step 3 looks). torch's ``ReduceLROnPlateau`` differs in both: it cuts when its bad
    count *exceeds* its patience, and it zeroes the count in every cooldown epoch after counting.
    """

    def __init__(self, optimizer: Optimizer, *, factor: float = 0.1, patience: int = 10, min_delta: float = 1e-4,
                 cooldown: int = 0, min_lr: float = 0.0) -> None:
        self.optimizer = optimizer
        self.factor, self.patience, self.min_delta = factor, patience, min_delta
        self.cooldown, self.min_lr = cooldown, min_lr
        self.best = math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def epoch_end(self, monitored: float) -> None:
        """Keras' ``on_epoch_end`` (see the class docstring); a NaN figure counts as no improvement, as there."""
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if monitored < self.best - self.min_delta:
            self.best = monitored
            self.wait = 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and self.optimizer.lr > self.min_lr:
                self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
                self.cooldown_counter = self.cooldown
                self.wait = 0

    def _settings(self) -> dict[str, Any]:
        return {"factor": self.factor, "patience": self.patience, "min_delta": self.min_delta,
                "cooldown": self.cooldown, "min_lr": self.min_lr}

    def state_dict(self) -> dict[str, Any]:
        """Counters, best figure (None before the first epoch: JSON has no infinity) and the current lr."""
        return {"class": "ReduceOnPlateau", "best": None if math.isinf(self.best) else self.best, "wait": self.wait,
                "cooldown_counter": self.cooldown_counter, "lr": self.optimizer.lr, **self._settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s counters and lr; refuses other settings."""
        state = self._check_class(state)
        if {key: state.get(key) for key in self._settings()} != self._settings():
            raise ValueError(f"plateau schedule state for other settings than {self._settings()}")
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.wait, self.cooldown_counter = int(state["wait"]), int(state["cooldown_counter"])
        self.optimizer.lr = float(state["lr"])
