"""The model zoo: the seed tutorial's three Keras networks, rebuilt in PyTorch with Keras' initialisation.

Every model takes a float batch ``(B, 1, 28, 28)`` scaled to [0, 1] and returns logits ``(B, 10)``. Softmax is
left out of the modules on purpose: cross-entropy on logits is the numerically stable form of Keras'
``softmax`` + ``categorical_crossentropy``, and probabilities are computed where they are shown.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.config import model_info
from mnistlab.errors import MnistlabError

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


def prepare_batch(images: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """uint8 images (B, 28, 28) -> float32 (B, 1, 28, 28) in [0, 1]: the one scaling used everywhere.

    Data stays uint8 until here, so a batch is the only float copy that ever exists. With one channel the
    channels-last layout is the same memory; asking for it only sets the strides convolutions expect.
    """
    batch = images.unsqueeze(1).to(torch.float32).div_(255.0)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def keras_init_(model: nn.Module) -> nn.Module:
    """Initialise like Keras: glorot-uniform kernels, zero biases (PyTorch's defaults differ).

    Glorot's fans for a conv kernel are ``in_channels * kh * kw`` and ``out_channels * kh * kw``, which is
    what ``xavier_uniform_`` computes for a PyTorch weight of shape (out, in, kh, kw).
    """
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def build_softmax(num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """One dense layer on the flattened pixels: 784*10 + 10 = 7,850 parameters."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, num_classes))


def build_mlp(num_classes: int = NUM_CLASSES, hidden: int = 100) -> nn.Sequential:
    """784 -> 100 -> 100 -> 10 with ReLU: 89,610 parameters."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def build_cnn(num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """The seed's convnet: 3x3 convs of 32, 64, 64 channels, 2x2 max-pools after the first two: 61,514 params.

    Max-pooling comes *before* each pooled ReLU. The two orders compute the same function (ReLU is monotonic,
    so max(relu(a), relu(b)) = relu(max(a, b))) but this one applies ReLU to a quarter of the values.
    """
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3), nn.MaxPool2d(2), nn.ReLU(),    # (B, 32, 13, 13)
        nn.Conv2d(32, 64, kernel_size=3), nn.MaxPool2d(2), nn.ReLU(),   # (B, 64, 5, 5)
        nn.Conv2d(64, 64, kernel_size=3), nn.ReLU(),                    # (B, 64, 3, 3)
        nn.Flatten(),                                                   # (B, 576)
        nn.Linear(64 * 3 * 3, num_classes),
    )


def build_fast(num_classes: int = NUM_CLASSES, widths: tuple[int, int, int] = (16, 32, 64)) -> nn.Sequential:
    """The ``fast`` recipe's network: a strided 4x4 stem, two 3x3 convs, BatchNorm after each pooling.

    The stride-2 stem halves the resolution before anything else, so the widest activation is 14x14 instead
    of 26x26: on a CPU, memory traffic through the early layers costs more than the multiply-adds. Widths
    (16, 32, 64) were chosen on a validation split as the cheapest that still clears 99% (see
    benchmarks/RESULTS.md for the candidates measured).
    """
    stem, middle, last = widths
    return nn.Sequential(
        nn.Conv2d(1, stem, kernel_size=4, stride=2, padding=1, bias=False),               # (B, 16, 14, 14)
        nn.BatchNorm2d(stem), nn.ReLU(),
        nn.Conv2d(stem, middle, kernel_size=3, padding=1, bias=False), nn.MaxPool2d(2),   # (B, 32, 7, 7)
        nn.BatchNorm2d(middle), nn.ReLU(),
        nn.Conv2d(middle, last, kernel_size=3, padding=1, bias=False), nn.MaxPool2d(2),   # (B, 64, 3, 3)
        nn.BatchNorm2d(last), nn.ReLU(),
        nn.Flatten(),                                                                     # (B, 576)
        nn.Linear(last * 3 * 3, num_classes),
    )


def build_best(num_classes: int = NUM_CLASSES, widths: tuple[int, int, int] = (32, 64, 128)) -> nn.Sequential:
    """The ``best`` recipe's network: ``fast``'s layout, twice as wide, with a second convolution at 7x7.

    Same reasoning as :func:`build_fast` (a strided stem keeps the widest activation at 14x14); the extra
    width and depth are what light augmentation over 20 epochs can use. Chosen on a validation split
    (benchmarks/best_selection.py records the candidates).
    """
    stem, middle, last = widths
    return nn.Sequential(
        nn.Conv2d(1, stem, kernel_size=4, stride=2, padding=1, bias=False),               # (B, 32, 14, 14)
        nn.BatchNorm2d(stem), nn.ReLU(),
        nn.Conv2d(stem, middle, kernel_size=3, padding=1, bias=False), nn.MaxPool2d(2),   # (B, 64, 7, 7)
        nn.BatchNorm2d(middle), nn.ReLU(),
        nn.Conv2d(middle, last, kernel_size=3, padding=1, bias=False),                    # (B, 128, 7, 7)
        nn.BatchNorm2d(last), nn.ReLU(),
        nn.Conv2d(last, last, kernel_size=3, padding=1, bias=False), nn.MaxPool2d(2),     # (B, 128, 3, 3)
        nn.BatchNorm2d(last), nn.ReLU(),
        nn.Flatten(),                                                                     # (B, 1152)
        nn.Linear(last * 3 * 3, num_classes),
    )


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "softmax": build_softmax,
    "mlp": build_mlp,
    "cnn": build_cnn,
    "fast": build_fast,
    "best": build_best,
}
# The networks this package defines (a run's model.json says "custom" for any other, registered by a user).
BUILTIN_NETWORKS: frozenset[str] = frozenset(BUILDERS)


def register_model(
    name: str | None = None,
    *,
    description: str = "a network registered by the user",
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float | None = None,
    replace: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``builder`` (``builder(num_classes=10) -> nn.Module``) a model mnistlab trains by name.

    A registered model trains, saves, reloads, evaluates, predicts and serves like the built-in ones; its
    recipe (epochs, batch, optimizer, lr) is the default for ``mnistlab.train(name)``. The module must take
    ``(B, 1, 28, 28)`` floats in [0, 1] and return logits ``(B, num_classes)``. Reloading a run in a new
    process needs the same registration first (a run never imports code named in its files).
    """
    from mnistlab.config import CLASSICAL_MODELS, CUSTOM_MODELS, MODELS, ModelInfo, Recipe

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if not key.replace("-", "_").replace("_", "a").isalnum():
            raise MnistlabError(f"model name {key!r}: use letters, digits, '-' and '_'")
        if key in MODELS or key in CLASSICAL_MODELS:
            raise MnistlabError(f"model name {key!r} is a built-in model; choose another name")
        previous = BUILDERS.get(key)
        # Re-running a notebook cell defines the same function again: same module and name, not a clash.
        same_definition = previous is not None and (getattr(previous, "__module__", None), getattr(
            previous, "__qualname__", None)) == (builder.__module__, builder.__qualname__)
        if key in CUSTOM_MODELS and not replace and previous is not builder and not same_definition:
            raise MnistlabError(f"model {key!r} is already registered; pass replace=True to change it")
        recipe = Recipe(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr)  # type: ignore[arg-type]
        CUSTOM_MODELS[key] = ModelInfo(key, description, recipe)
        BUILDERS[key] = builder
        return builder

    return decorate


def build(name: str, *, num_classes: int = NUM_CLASSES, seed: int | None = None) -> nn.Module:
    """The network ``name`` (built-in or registered) with Keras initialisation; ``seed`` makes it reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    return build_model(name, num_classes=num_classes)


def summary(model: str | nn.Module, *, name: str | None = None) -> ModelSummary:
    """The Keras-style summary of a network given by name or as a module (``print(summary("cnn"))``)."""
    if isinstance(model, str):
        return summarize(build_model(model), name=model)
    return summarize(model, name=name or type(model).__name__)


def is_convolutional(model: nn.Module) -> bool:
    """True when the model has conv layers (they run faster with channels-last activations on CPU and GPU)."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def build_model(name: str, *, num_classes: int = NUM_CLASSES) -> nn.Module:
    """Build model ``name`` with Keras initialisation (seed torch's RNG first for reproducible weights)."""
    info = model_info(name)  # raises a clear error for unknown names
    if info.family != "network":
        raise MnistlabError(f"{name} is a classical baseline ({info.description}), not a network: "
                            "it has no layers to build or summarise")
    from mnistlab.config import CUSTOM_MODELS

    built = BUILDERS[name](num_classes=num_classes)
    if not isinstance(built, nn.Module):
        raise MnistlabError(f"model {name!r}: its builder returned {type(built).__name__}, not a torch nn.Module")
    # Built-in networks get Keras' initialisation; a user's own network keeps the initialisation it chose.
    return built if name in CUSTOM_MODELS else keras_init_(built)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass(frozen=True)
class LayerRow:
    """One line of a model summary."""

    name: str
    kind: str
    output_shape: tuple[int | None, ...]
    params: int


@dataclass(frozen=True)
class ModelSummary:
    """A Keras-style summary: layers with output shapes and parameter counts, totals, input/output shapes."""

    model: str
    layers: tuple[LayerRow, ...]
    total_params: int
    trainable_params: int
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]

    @property
    def non_trainable_params(self) -> int:
        """Parameters without gradients (always 0 for mnistlab's models)."""
        return self.total_params - self.trainable_params

    def __str__(self) -> str:
        """The Keras-style table as plain text (what ``print(summary)`` shows in a notebook)."""
        def shape(dims: tuple[int | None, ...]) -> str:
            return "(" + ", ".join("None" if d is None else str(d) for d in dims) + ")"

        rows = [(f"{row.name} ({row.kind})", shape(row.output_shape), f"{row.params:,}") for row in self.layers]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(("Layer (type)", "Output Shape",
                                                                                   "Param #"))]
        line = "  ".join(f"{{:<{w}}}" for w in widths)
        rule = "-" * (sum(widths) + 4)
        body = [f"Model: {self.model}", rule, line.format("Layer (type)", "Output Shape", "Param #"), rule]
        body += [line.format(*r) for r in rows]
        body += [rule, f"Total params: {self.total_params:,}", f"Trainable params: {self.trainable_params:,}",
                 f"Non-trainable params: {self.non_trainable_params:,}"]
        return "\n".join(body)


def summarize(model: nn.Module, *, name: str, input_shape: tuple[int, ...] = INPUT_SHAPE) -> ModelSummary:
    """Trace one dummy sample through ``model`` and record each leaf layer's output shape and parameters.

    Shapes are reported with ``None`` for the batch dimension, as Keras does (PyTorch's channels-first order).
    """
    rows: list[LayerRow] = []
    hooks = []
    counters: dict[str, int] = {}

    def record(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        kind = type(module).__name__
        counters[kind] = counters.get(kind, 0) + 1
        rows.append(LayerRow(
            name=f"{kind.lower()}_{counters[kind]}",
            kind=kind,
            output_shape=(None, *output.shape[1:]),
            params=sum(p.numel() for p in module.parameters(recurse=False)),
        ))

    for module in model.modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            out = model(torch.zeros((1, *input_shape), device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return ModelSummary(
        model=name,
        layers=tuple(rows),
        total_params=count_parameters(model),
        trainable_params=count_parameters(model, trainable_only=True),
        input_shape=(None, *input_shape),
        output_shape=(None, *out.shape[1:]),
    )


# ---------------------------------------------------------------------------------------------- ensembles
# An ensemble run (made by mnistlab.ensembles) is rebuilt here, beside the other networks, so that loading a run
# never needs the module that makes ensembles.
class Ensemble(nn.Module):
    """Members ``member0``, ``member1``, ...; ``forward`` gives log of the mean of their softmax probabilities."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise MnistlabError("an ensemble needs at least one member network")
        for index, member in enumerate(members):
            self.add_module(f"member{index}", member)
        self.count = len(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (B, classes) logits: ``logsumexp_i log_softmax(member_i(x)) - log(count)``.

        logsumexp of log-probabilities is the stable form of log(sum of probabilities): no probability is
        exponentiated back from a log that underflowed.
        """
        logs = torch.stack([F.log_softmax(member(x).float(), dim=1) for member in self.children()])
        return torch.logsumexp(logs, dim=0) - math.log(self.count)


def _refuse_renamed_custom(spec: dict[str, Any], *, where: str) -> None:
    """One line for a user's own network saved under a name a later mnistlab took for a built-in network
    (building the built-in one would only fail later, with weights that do not match)."""
    name = spec.get("name")
    if spec.get("custom") and name in BUILTIN_NETWORKS:
        raise MnistlabError(f"{where} is a custom network named {name!r}, now the name of a built-in mnistlab "
                            "network; register yours under another name and retrain, or load it with the mnistlab "
                            "version that trained it")


def ensemble_from_record(record: dict[str, Any], *, where: str | os.PathLike[str]) -> Ensemble:
    """The (untrained) :class:`Ensemble` a ``model.json`` record describes: each member rebuilt by name.

    Custom members need their :func:`mnistlab.models.register_model` in this process, as a custom run does.
    """
    members = record.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise MnistlabError(f"{where}: model.json lists no ensemble members (edited or damaged); rebuild it with "
                            "`mnistlab ensemble`")
    modules = []
    for index, member in enumerate(members):
        spec = member.get("model") if isinstance(member.get("model"), dict) else {}
        name = str(spec.get("name"))
        _refuse_renamed_custom(spec, where=f"{where}: ensemble member {index}")
        if name not in BUILDERS:
            hint = ("it is a custom model: call mnistlab.models.register_model for it in this process first"
                    if spec.get("custom") else f"known: {', '.join(BUILDERS)}")
            raise MnistlabError(f"{where}: ensemble member {index} is model {name!r}, which this mnistlab does not "
                                f"know; {hint}")
        modules.append(BUILDERS[name](num_classes=int(spec.get("num_classes", NUM_CLASSES))))
    return Ensemble(modules)


# ----------------------------------------------------------------------------------------------- weights
def model_record(name: str, model: nn.Module, *, class_names: tuple[str, ...], dataset: str,
                 precision: str = "fp32") -> dict[str, Any]:
    """The ``model.json`` content for a built model (``precision``: what it was trained and scored in)."""
    return {
        "format": "mnistlab-model/1",
        "name": name,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "dataset": dataset,
        "input_shape": list(INPUT_SHAPE),
        "params": count_parameters(model),
        "precision": precision,
        "custom": name not in BUILTIN_NETWORKS,
    }


def weights_bytes(model: nn.Module) -> bytes:
    """The model's state as safetensors bytes (contiguous CPU copies; safetensors refuses views)."""
    from safetensors.torch import save

    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
    return save(tensors, metadata={"format": "pt"})


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, model_name: str) -> nn.Module:
    """Load safetensors weights into ``model``, checking names and shapes first (never pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MnistlabError(f"{path}: not a readable safetensors file ({exc}); restore it or retrain") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{key} {tuple(tensors[key].shape)} != {tuple(value.shape)}"
             for key, value in expected.items() if key in tensors and tensors[key].shape != value.shape]
    if missing or unexpected or wrong:
        details = "; ".join(part for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(unexpected)}" if unexpected else "",
            f"shape {', '.join(wrong)}" if wrong else "",
        ) if part)
        raise MnistlabError(f"{path}: weights do not match model {model_name!r} ({details}); "
                            "the run directory is inconsistent, retrain it")
    model.load_state_dict(tensors)
    return model


def load_trained_model(run_dir: str | os.PathLike[str], *, device: torch.device | str = "cpu",
                       weights: str = "last") -> tuple[nn.Module, Any]:
    """Rebuild a run's model from ``model.json`` and load its weights (``weights``: last, best or auto, see
    :func:`mnistlab.runs.read_run`); returns (model, RunFiles)."""
    from mnistlab.runs import read_run

    run = read_run(run_dir, weights=weights)  # type: ignore[arg-type]  # checked there
    name = run.model["name"]
    if run.model.get("family") == "classical":
        raise MnistlabError(f"{run.path} holds a classical {name} model, not a network; predict and serve need a "
                            f"network run ({', '.join(BUILDERS)}); `mnistlab evaluate` scores classical runs")
    if name == "ensemble":  # several networks averaged as one (mnistlab.ensembles), rebuilt member by member
        ensemble = ensemble_from_record(run.model, where=run.path)
        load_weights(ensemble, run.weights, model_name=name)
        return to_device(ensemble, device).eval(), run
    _refuse_renamed_custom(run.model, where=f"{run.path}: its model")
    if name not in BUILDERS:
        custom = run.model.get("custom")
        hint = ("it is a custom model: call mnistlab.models.register_model for it in this process first"
                if custom else f"known: {', '.join(BUILDERS)}")
        raise MnistlabError(f"{run.path}: model {name!r} is not one this mnistlab knows; {hint}")
    model = BUILDERS[name](num_classes=int(run.model.get("num_classes", NUM_CLASSES)))
    load_weights(model, run.weights, model_name=name)
    return to_device(model, device).eval(), run


def to_device(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` on ``device``; convolutional models in channels-last layout (faster on CPU and GPU)."""
    layout = torch.channels_last if is_convolutional(model) else torch.contiguous_format
    # torch's type stubs omit Module.to's memory_format keyword, which it accepts (nn.Module.to docs).
    return model.to(device, memory_format=layout)  # type: ignore[call-overload]
