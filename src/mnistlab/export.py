"""Export a run to ONNX, with its contract in the file's metadata and a model card beside it.

The exported graph takes what any runtime can make with numpy: float32 ``N x 1 x 28 x 28``, white ink on
black, scaled to [0, 1] (``uint8 / 255``), with a dynamic batch, and returns logits ``N x classes``. Networks go
through torch's own exporter (``torch.onnx.export``, its TorchScript path: the dynamo path needs onnxscript,
which mnistlab does not depend on); the linear classical models (``sgd``, ``logreg``) are a MatMul + Add graph
built with ``onnx.helper``. k-NN, the SVM and the forest are refused: no maintained converter handles
mnistlab's array format, and a k-NN "model" is the training set itself.

Reading an exported file (:func:`read_metadata`, :func:`cached_onnx`) needs onnxruntime only: that half of
this module never imports torch, so ``predict``/``serve`` on a ``.onnx`` start in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from mnistlab.errors import MnistlabError

if TYPE_CHECKING:
    from torch import nn

    from mnistlab.runs import RunFiles

ExportFormat = Literal["onnx"]
Quantize = Literal["none", "int8"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)
QUANTIZE_CHOICES: tuple[str, ...] = get_args(Quantize)

FORMAT_TAG = "mnistlab-onnx/1"
DEFAULT_OPSET = 17
# 13: the first opset whose ops (Flatten, Gemm, MaxPool...) all have today's semantics; 20: the newest the
# TorchScript exporter of torch 2.13 writes.
MIN_OPSET, MAX_OPSET = 13, 20
INPUT_NAME, OUTPUT_NAME = "images", "logits"
MAX_ONNX_BYTES = 256 * 1024 * 1024  # mnistlab's largest network is a few hundred KB; refuse anything absurd
EXPORT_DIR = "export"
CACHE_FILE = "model.onnx"
CARD_FILE = "MODEL_CARD.md"
LINEAR_CLASSICAL = ("sgd", "logreg")
PREPROCESSING = ("28x28 grayscale, white ink on black; the digit scaled to fit a 20x20 px box (aspect kept) and "
                 "centred by its centre of mass in the 28x28 frame, as MNIST was made "
                 "(mnistlab.imaging.prepare_image); then float32 = uint8 / 255, shape N x 1 x 28 x 28")
SELF_CHECK_IMAGES = 32
SELF_CHECK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote and checked."""

    path: Path
    card: Path | None
    format: ExportFormat
    opset: int
    quantize: Quantize
    size_bytes: int
    metadata: dict[str, str] = field(repr=False)
    # Largest |ORT logit - reference logit| on a seeded batch of images, measured right after writing
    # (reference: torch fp32 for networks, the numpy scorer for linear models; for int8 this is the
    # quantization error, not checked against the tolerance).
    self_check_max_abs_diff: float = 0.0


# ------------------------------------------------------------------------------------------ checking input
def check_out_path(out: str | os.PathLike[str]) -> Path:
    """``out`` if an ONNX file can be written there, else one line naming the fix."""
    path = Path(out)
    if path.is_dir():
        raise MnistlabError(f"--out {path}: is a folder; name a file such as {path / 'model.onnx'}")
    if path.suffix.lower() != ".onnx":
        raise MnistlabError(f"--out {path}: name a file ending in .onnx")
    if not path.parent.is_dir():
        raise MnistlabError(f"--out {path}: folder {path.parent} does not exist")
    return path


def check_opset(opset: int) -> int:
    """``opset`` if mnistlab's exporters write it."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise MnistlabError(f"--opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    return opset


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in blocks (what ties an export to the weights it came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ export
def export_run(
    run_dir: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    format: ExportFormat = "onnx",
    opset: int = DEFAULT_OPSET,
    quantize: Quantize = "none",
    card: bool = True,
    run_id: int | None = None,
    model: nn.Module | None = None,
    weights: str = "auto",
) -> ExportResult:
    """Export the run in ``run_dir`` to ONNX at ``out`` (default ``RUN/export/model.onnx``), atomically.

    The file's metadata carries the contract (input name/shape/dtype, preprocessing, class names) and the
    provenance (run, data digests, test accuracy, weights digest, mnistlab version). Right after writing,
    onnxruntime scores a seeded batch and is compared with the reference scorer. ``quantize="int8"``: dynamic
    int8 quantization of the weights by onnxruntime's own tool. ``card``: also write MODEL_CARD.md beside it.
    ``model``: an already loaded module (the API passes it, so registered custom models need no lookup).
    ``weights``: the run's best or last weights (``auto``: best where it kept them); the metadata says which.
    """
    from mnistlab.runs import read_run, write_bytes_atomic

    if format not in FORMATS:
        raise MnistlabError(f"--format {format!r}: choose from {', '.join(FORMATS)}")
    if quantize not in QUANTIZE_CHOICES:
        raise MnistlabError(f"--quantize {quantize!r}: choose from {', '.join(QUANTIZE_CHOICES)}")
    check_opset(opset)
    require("onnx")
    require("onnxruntime")
    run = read_run(run_dir, weights=weights)  # type: ignore[arg-type]  # checked there
    default_name = "model.int8.onnx" if quantize == "int8" else cache_name(run.weights_used)
    if out is None:
        (run.path / EXPORT_DIR).mkdir(exist_ok=True)
    target = check_out_path(out if out is not None else run.path / EXPORT_DIR / default_name)
    name = str(run.model["name"])
    if run.model.get("family") == "classical":
        if name not in LINEAR_CLASSICAL:
            raise MnistlabError(f"{run.path}: a {name} model cannot be exported to ONNX (only the networks and "
                                f"the linear {' and '.join(LINEAR_CLASSICAL)} baselines can); serve it with "
                                "`mnistlab evaluate`-style scoring in Python instead")
        graph, reference = _linear_onnx(run, opset=opset)
    else:
        graph, reference = _network_onnx(run, opset=opset, model=model)
    metadata = export_metadata(run, run_id=run_id, opset=opset, quantize=quantize,
                               weights_sha256=file_sha256(run.weights))
    data = _with_metadata(graph, metadata)
    if quantize == "int8":
        data = _with_metadata(_quantize_int8(data), metadata)
    diff = _self_check(data, reference, quantized=quantize == "int8", where=target)
    write_bytes_atomic(target, data)
    card_path = None
    if card:
        from mnistlab.runs import write_text_atomic

        card_path = write_text_atomic(target.with_name(CARD_FILE), model_card(run, target, metadata))
    return ExportResult(path=target, card=card_path, format=format, opset=opset, quantize=quantize,
                        size_bytes=len(data), metadata=metadata, self_check_max_abs_diff=diff)


def _network_onnx(run: RunFiles, *, opset: int, model: nn.Module | None) -> tuple[bytes, Any]:
    """The network's ONNX bytes (fp32 weights, contiguous layout) and a torch fp32 reference scorer."""
    import copy

    import torch

    from mnistlab.inference import predict_logits
    from mnistlab.models import load_trained_model

    if model is None:
        model = load_trained_model(run.path, device="cpu", weights=run.weights_used)[0]
    # A copy in fp32, on the CPU, in the default memory layout: the exported graph must not depend on how the
    # run is scored here (channels-last, bf16 autocast), only on its weights. bf16-trained runs keep fp32
    # master weights, so this is the exact function the optimizer produced.
    # torch's type stubs omit Module.to's memory_format keyword, which it accepts (nn.Module.to docs).
    module = copy.deepcopy(model).to("cpu", dtype=torch.float32,  # type: ignore[call-overload]
                                     memory_format=torch.contiguous_format).eval()
    example = torch.zeros((2, 1, 28, 28), dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="mnistlab-export-") as folder, warnings.catch_warnings():
        written = Path(folder) / "model.onnx"
        # The TorchScript exporter is deprecated in favour of dynamo (which needs onnxscript); it still
        # writes a plain, exact graph for these feed-forward networks.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), str(written), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}}, do_constant_folding=True)
        except Exception as exc:  # the exporter's own errors (unsupported op...) have many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MnistlabError(f"{run.path}: torch.onnx.export could not export model {run.model['name']!r} "
                                f"({first}); try another --opset") from None
        data = written.read_bytes()

    def reference(images: np.ndarray) -> np.ndarray:
        return predict_logits(module, images, device="cpu", precision="fp32").numpy()

    return data, reference


def _linear_onnx(run: RunFiles, *, opset: int) -> tuple[bytes, Any]:
    """A linear model (``x @ coef.T + intercept`` on the flattened [0, 1] pixels) as Flatten + MatMul + Add."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mnistlab.baselines import load_classical_model

    classical, _ = load_classical_model(run.path)
    coef = np.asarray(classical.arrays["coef"], dtype=np.float32)          # (K, 784)
    intercept = np.asarray(classical.arrays["intercept"], dtype=np.float32)  # (K,)
    classes = int(coef.shape[0])
    nodes = [
        helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["product"]),
        helper.make_node("Add", ["product", "bias"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes, f"mnistlab_{run.model['name']}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(coef.T), "weight"),
                     numpy_helper.from_array(intercept, "bias")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="mnistlab")
    proto.ir_version = min(proto.ir_version, 9)  # readable by onnxruntime releases of the last two years
    onnx.checker.check_model(proto)

    def reference(images: np.ndarray) -> np.ndarray:
        from mnistlab.baselines import flatten_scaled, linear_scores

        return linear_scores(flatten_scaled(images), coef, intercept)

    return proto.SerializeToString(), reference


def export_metadata(run: RunFiles, *, run_id: int | None, opset: int, quantize: Quantize,
                    weights_sha256: str) -> dict[str, str]:
    """The contract and provenance written into the file's ``metadata_props`` (all values are strings)."""
    from mnistlab import __version__

    metrics = run.metrics or {}
    names = [str(n) for n in run.model.get("class_names") or range(10)]
    accuracy = metrics.get("test_accuracy")  # scored at training: the last epoch's weights
    if run.weights_used == "best":
        from mnistlab.analysis import cached_evaluation

        cached = cached_evaluation(run.path, "test", weights="best")  # the best weights' own, when evaluated
        accuracy = cached.get("accuracy") if cached else None
    return {
        "mnistlab.format": FORMAT_TAG,
        "mnistlab.version": __version__,
        "input_name": INPUT_NAME,
        "input_shape": "N,1,28,28",
        "input_dtype": "float32",
        "input_range": "0..1 (uint8 / 255), white ink on black",
        "output_name": OUTPUT_NAME,
        "output_shape": f"N,{len(names)}",
        "output_kind": "logits (softmax gives probabilities)" if run.model.get("score_kind") != "decision"
                       else "decision values (argmax is the class; softmax only ranks them)",
        "preprocessing": PREPROCESSING,
        "class_names": json.dumps(names),
        "model": str(run.model.get("name")),
        "family": str(run.model.get("family", "network")),
        "params": str(run.model.get("params", "")),
        "dataset": str(run.model.get("dataset", run.config.get("dataset", ""))),
        "data_sha256": json.dumps(_data_digests(run)),
        "data_checksums": str(metrics.get("checksums", "unknown")),
        "run_id": "" if run_id is None else str(run_id),
        "run_path": str(run.path.resolve()),
        "weights_sha256": weights_sha256,
        "weights_used": run.weights_used
                        + (f" (epoch {run.best.get('epoch')} by {run.best.get('monitor')})" if run.best else ""),
        "test_accuracy": "" if not isinstance(accuracy, int | float) else repr(float(accuracy)),
        "test_count": str(metrics.get("test_count", "")),
        "trained_precision": str(run.model.get("precision", "fp32")),
        "exported_precision": "int8 weights (dynamic quantization)" if quantize == "int8" else "fp32",
        "opset": str(opset),
    }


def _data_digests(run: RunFiles) -> dict[str, str]:
    """The SHA-256 (uncompressed) of the four data files the run was trained and tested on, where known."""
    from mnistlab.data import dataset_spec

    try:
        spec = dataset_spec(str(run.config.get("dataset", "mnist")), data_dir=run.config.get("data_dir"))
    except MnistlabError:
        return {}
    return dict(spec.sha256 or {})


def _with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "mnistlab"
    proto.doc_string = f"mnistlab {metadata['model']}: {metadata['input_shape']} float32 -> logits"
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def _quantize_int8(data: bytes) -> bytes:
    """Dynamic int8 quantization (weights int8, activations quantized on the fly) by onnxruntime's tool."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="mnistlab-quant-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(data)
        # The tool logs advice ("consider pre-processing") on the root logger; it is not a problem here.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        return target.read_bytes()


def _self_check(data: bytes, reference: Any, *, quantized: bool, where: Path) -> float:
    """Score a seeded batch with onnxruntime and the reference; a float32 export must agree to 1e-4."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(SELF_CHECK_IMAGES, 28, 28), dtype=np.uint8)
    images[:8] = 0  # blank images exercise the biases alone
    session = _session(data, where=str(where), threads=1)
    got = session.run([OUTPUT_NAME], {INPUT_NAME: to_input(images)})[0]
    want = np.asarray(reference(images), dtype=np.float64)
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    if not quantized and not diff <= SELF_CHECK_TOLERANCE:
        raise RuntimeError(f"exported graph disagrees with the model it came from by {diff:.3g} (a bug)")
    return diff


# -------------------------------------------------------------------------------------- reading (no torch)
def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> the graph's float32 (N, 1, 28, 28) in [0, 1], as mnistlab scales for torch."""
    return (np.asarray(images, dtype=np.uint8).astype(np.float32) / np.float32(255.0))[:, None]


def require(module: str) -> Any:
    """Import an optional dependency (onnx, onnxruntime), or say in one line how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MnistlabError(f"{module} is not installed; `pip install 'mnistlab[onnx]'` adds onnx and "
                            "onnxruntime") from None


def _session(data: bytes | str, *, where: str, threads: int | None = None) -> Any:
    """An onnxruntime CPU session; an unreadable model is one line naming the file."""
    ort = require("onnxruntime")

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: a bad file is reported once, by us
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        text = str(exc).strip().splitlines()
        reason = text[-1][:200] if text else type(exc).__name__
        raise MnistlabError(f"{where}: not a readable ONNX model ({reason}); re-export it with "
                            "`mnistlab export RUN --out FILE.onnx`") from None


def load_onnx(path: str | os.PathLike[str], *, threads: int | None = None) -> tuple[Any, dict[str, str]]:
    """(onnxruntime session, mnistlab metadata) of an exported file, checked to be mnistlab's contract."""
    path = Path(path)
    if not path.is_file():
        raise MnistlabError(f"{path}: no such ONNX file; `mnistlab export RUN --out {path}` writes one")
    size = path.stat().st_size
    if size == 0 or size > MAX_ONNX_BYTES:
        raise MnistlabError(f"{path}: {size:,} bytes is not a mnistlab ONNX model (limit {MAX_ONNX_BYTES:,}); "
                            "re-export it with `mnistlab export RUN`")
    session = _session(path.read_bytes(), where=str(path), threads=threads)
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    if metadata.get("mnistlab.format") != FORMAT_TAG:
        raise MnistlabError(f"{path}: an ONNX model without mnistlab's metadata (mnistlab.format "
                            f"{FORMAT_TAG}); export it with `mnistlab export RUN`")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if ([i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]
            or inputs[0].type != "tensor(float)" or list(inputs[0].shape[1:]) != [1, 28, 28]):
        raise MnistlabError(f"{path}: the graph's input/output are not {INPUT_NAME} float32 N x 1 x 28 x 28 -> "
                            f"{OUTPUT_NAME}; re-export it with `mnistlab export RUN`")
    return session, metadata


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The mnistlab metadata of an exported file (its contract and provenance), checked."""
    return load_onnx(path, threads=1)[1]


def cache_name(weights_used: str) -> str:
    """The export's default file name for the run's last (``model.onnx``) or best (``model-best.onnx``) weights."""
    return CACHE_FILE if weights_used == "last" else "model-best.onnx"


def cached_onnx(run_dir: str | os.PathLike[str], *, timeout_s: float = 600.0, weights: str = "auto") -> Path:
    """``RUN/export/model.onnx`` (``model-best.onnx`` for best weights: ``weights`` auto, best or last), exported
    now if missing or older than those weights.

    The export runs in a child process (``python -m mnistlab export``), so the caller never imports torch:
    ``serve --backend onnx RUN`` keeps the small memory of the onnxruntime path. Freshness is the weights'
    SHA-256 recorded in the file's metadata.

    A model registered with :func:`mnistlab.register_model` exists only in the Python that registered it, so a
    child process cannot build it: when it is registered here (torch is then loaded anyway) the export runs
    in this process; otherwise one line says to export it from the Python where it is registered.
    """
    from mnistlab.config import CLASSICAL_MODELS, CUSTOM_MODELS, MODELS
    from mnistlab.runs import MODEL_FILE, read_json, read_run

    files = read_run(run_dir, weights=weights)  # type: ignore[arg-type]  # checked there
    run = files.path
    target = run / EXPORT_DIR / cache_name(files.weights_used)
    chosen = files.weights
    if target.is_file() and chosen.is_file():
        try:
            if read_metadata(target).get("weights_sha256") == file_sha256(chosen):
                return target
        except MnistlabError:
            pass  # a broken cache is rebuilt below
    record = read_json(run / MODEL_FILE)
    model_name = str(record.get("name"))
    if model_name == "ensemble":  # a child process can build it when its members are built-in networks
        members = [str((m.get("model") or {}).get("name")) for m in record.get("members") or [] if isinstance(m, dict)]
        custom = [name for name in members if name not in MODELS]
        model_name = custom[0] if custom else "ensemble"
    if model_name not in MODELS and model_name not in CLASSICAL_MODELS and model_name != "ensemble":
        if model_name not in CUSTOM_MODELS:
            raise MnistlabError(
                f"--backend onnx: {run} is the custom model {model_name!r}, which only the Python that registers "
                f"it can build; there, call mnistlab.register_model for it and `mnistlab.load({str(run)!r})"
                f".export()`, then pass {target}")
        try:
            (run / EXPORT_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise MnistlabError(f"{run}: cannot write the ONNX cache {target} ({exc.strerror}); "
                                "export it with Run.export(out=FILE.onnx) and pass FILE.onnx instead") from None
        export_run(run, out=target, card=False, weights=files.weights_used)
        return target
    command = [sys.executable, "-m", "mnistlab", "export", str(run), "--out", str(target), "--no-card",
               "--weights", files.weights_used]
    try:
        (run / EXPORT_DIR).mkdir(exist_ok=True)
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except OSError as exc:
        raise MnistlabError(f"{run}: cannot write the ONNX cache {target} ({exc.strerror}); "
                            f"`mnistlab export {run} --out FILE.onnx` and pass FILE.onnx instead") from None
    except subprocess.TimeoutExpired:
        raise MnistlabError(f"{run}: exporting to ONNX took over {timeout_s:.0f} s; "
                            f"run `mnistlab export {run}` yourself") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1].removeprefix("mnistlab: error: ") if lines else f"exit code {done.returncode}"
        raise MnistlabError(f"--backend onnx: exporting {run} failed: {reason}")
    return target


# ----------------------------------------------------------------------------------------------- the card
def _evaluation_for_card(run: RunFiles) -> dict[str, Any] | None:
    """The run's test evaluation: the cached evaluation.json if it matches the weights, else computed now
    in memory (nothing is written into the run)."""
    from mnistlab.analysis import cached_evaluation, evaluate_scores, run_scores

    cached = cached_evaluation(run.path, "test")
    if cached is not None:
        return cached
    try:
        return evaluate_scores(run_scores(run.path, split="test", device="cpu")).to_dict()
    except MnistlabError:
        return None  # the data moved: the card says so instead of failing the export


def model_card(run: RunFiles, path: Path, metadata: dict[str, str]) -> str:
    """MODEL_CARD.md: what the model is, its data, figures, contract, failure modes, and how to run it."""
    evaluation = _evaluation_for_card(run)
    names = json.loads(metadata["class_names"])
    config = run.config
    lines = [
        f"# Model card: mnistlab `{metadata['model']}` ({metadata['dataset']})", "",
        f"File: `{path.name}` ({metadata['exported_precision']} weights, ONNX opset {metadata['opset']}), exported "
        f"by mnistlab {metadata['mnistlab.version']} from run `{metadata['run_path']}`"
        + (f" (registry id {metadata['run_id']})" if metadata["run_id"] else "") + ".", "",
        "## What it is", "",
        f"A {metadata['family']} classifier of 28x28 grayscale images into {len(names)} classes "
        f"({', '.join(names)}); {metadata['params']} parameters. {_training_text(config, metadata)} "
        f"Weights SHA-256 `{metadata['weights_sha256']}`.", "",
        "## Data", "",
        f"Dataset `{metadata['dataset']}` (checksum status at training: {metadata['data_checksums']}). "
        "SHA-256 of the uncompressed files:", "",
    ]
    digests = json.loads(metadata["data_sha256"])
    lines += [f"- `{name}`: `{digest}`" for name, digest in sorted(digests.items())] or ["- unknown"]
    lines += ["", "## Figures on the test set", ""]
    if metadata["test_accuracy"]:
        lines.append(f"Test accuracy recorded at training: {float(metadata['test_accuracy']):.4f} "
                     f"on {metadata['test_count']} images.")
    if evaluation is None:
        lines += ["", "No evaluation available (the run's data files were not found); "
                      "`mnistlab evaluate RUN` computes one."]
    else:
        lines += _evaluation_lines(evaluation, names)
    lines += [
        "", "## Input contract", "",
        f"- input `{metadata['input_name']}`: {metadata['input_dtype']} `{metadata['input_shape']}` "
        f"(N: any batch size), {metadata['input_range']}",
        f"- output `{metadata['output_name']}`: float32 `{metadata['output_shape']}`, {metadata['output_kind']}",
        f"- preprocessing: {metadata['preprocessing']}",
        "- photos and drawings must be prepared the same way (`mnistlab.imaging.prepare_image` does it); raw "
        "dark-on-light scans, uncentred or unscaled digits are out of distribution",
        "", "## Run it with onnxruntime", "", "```python",
        *onnx_example(path.name).splitlines(), "```", "",
    ]
    return "\n".join(lines)


def _training_text(config: dict[str, Any], metadata: dict[str, str]) -> str:
    if metadata["family"] == "classical":
        options = ", ".join(f"{k}={v}" for k, v in (config.get("options") or {}).items())
        return f"Fitted with scikit-learn ({options or 'default options'}), seed {config.get('seed')}."
    if metadata["model"] == "ensemble":
        members = config.get("members") or []
        return (f"An ensemble: the mean of the softmax probabilities of {len(members)} trained networks (the graph "
                "outputs the log of that mean, so softmax of the output is the averaged probability).")
    epochs = config.get("epochs")
    return (f"Trained {epochs} epoch{'' if epochs == 1 else 's'}, batch {config.get('batch_size')}, optimizer "
            f"{config.get('optimizer')}, seed {config.get('seed')}, batch augmentation "
            f"{config.get('augment', 'none')}, in {metadata['trained_precision']} (the export holds the fp32 master "
            "weights).")


def _evaluation_lines(evaluation: dict[str, Any], names: list[str]) -> list[str]:
    report = evaluation.get("classification_report", {})
    lines = [f"Evaluated now: accuracy {evaluation['accuracy']:.4f}, error {100 * evaluation['error']:.2f}% "
             f"on {evaluation['count']:,} images.", ""]
    calibration = evaluation.get("calibration")
    if calibration:
        lines += [f"Calibration: expected calibration error (ECE) {100 * calibration['ece']:.2f}%, maximum (MCE) "
                  f"{100 * calibration['mce']:.2f}% over {calibration['bins']} confidence bins.", ""]
    lines += ["| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
    for name in names:
        row = report.get(name)
        if row:
            lines.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1-score']:.4f} "
                         f"| {int(row['support'])} |")
    pairs = evaluation.get("most_confused") or []
    lines += ["", "## Known failure modes", ""]
    if pairs:
        lines.append("The most confused pairs on the test set (true -> predicted):")
        lines.append("")
        lines += [f"- {names[p['true']]} read as {names[p['predicted']]}: {p['count']} images "
                  f"({100 * p['fraction_of_true']:.2f}% of the {names[p['true']]}s)" for p in pairs[:5]]
    else:
        lines.append("No confusions on the test set.")
    lines += ["", "Beyond the test set: digits not centred or scaled as above, thick or faint strokes, several "
                  "digits in one image, and non-digits (the model always answers one of its classes)."]
    return lines


def onnx_example(filename: str) -> str:
    """Five lines of Python that run the exported file with onnxruntime (the card and README show them)."""
    return (
        "import numpy as np, onnxruntime as ort\n"
        f'session = ort.InferenceSession("{filename}", providers=["CPUExecutionProvider"])\n'
        "digits = np.zeros((1, 28, 28), np.uint8)  # your prepared 28x28 digits, white on black (N, 28, 28)\n"
        f'logits = session.run(["{OUTPUT_NAME}"], {{"{INPUT_NAME}": digits[:, None].astype(np.float32) / 255}})[0]\n'
        "print(logits.argmax(axis=1))\n"
    )
