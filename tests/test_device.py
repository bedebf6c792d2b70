"""mnistlab.device: device choice and precision, including GPUs that only emulate bf16 (checked on the CPU by
replacing torch's CUDA queries, since CI has no GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mnistlab import device, runs
from mnistlab.cli import main
from mnistlab.device import resolve_precision
from mnistlab.errors import MnistlabError

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_fp32_is_always_fp32() -> None:
    assert device.resolve_precision("fp32", CPU) == ("fp32", None)
    assert device.resolve_precision("fp32", CUDA) == ("fp32", None)


def test_auto_on_a_gpu_that_only_emulates_bf16_picks_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """A T4 (compute capability 7.5) says is_bf16_supported() == True through emulation; auto must not use it."""
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return including_emulation           # emulated only: True unless emulation is excluded

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert device.resolve_precision("auto", CUDA) == ("fp32", None)
    precision, note = device.resolve_precision("bf16", CUDA)
    assert precision == "fp32" and note is not None and "no native bf16" in note


def test_auto_on_an_ampere_gpu_picks_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert device.resolve_precision("auto", CUDA) == ("bf16", None)


def test_older_torch_without_the_keyword_falls_back_to_compute_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    def old_probe() -> bool:      # no including_emulation keyword: TypeError when it is passed
        return True

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_probe)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (7, 5))
    assert device.cuda_has_native_bf16() is False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (9, 0))
    assert device.cuda_has_native_bf16() is True


def test_cpu_bf16_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.resolve_precision("auto", CPU) == ("bf16", None)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert device.resolve_precision("auto", CPU) == ("fp32", None)
    precision, note = device.resolve_precision("bf16", CPU)
    assert precision == "fp32" and note is not None and "AVX512-BF16" in note


def test_devices() -> None:
    assert device.resolve_device("cpu") == CPU
    assert device.resolve_device("auto") == (CUDA if torch.cuda.is_available() else CPU)
    with pytest.raises(MnistlabError, match="`device` 'tpu' is not one of auto, cpu, cuda"):
        device.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MnistlabError, match="no CUDA GPU is available"):
            device.resolve_device("cuda")


CPU = torch.device("cpu")


def test_precision_fp32_is_always_honoured() -> None:
    assert resolve_precision("fp32", CPU) == ("fp32", None)


def test_precision_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == ("bf16", None)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == ("fp32", None)


def test_bf16_without_hardware_support_falls_back_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    precision, note = resolve_precision("bf16", CPU)
    assert precision == "fp32"
    assert note is not None and "no native bf16" in note and "fp32" in note


def test_cli_prints_the_fallback_note_and_records_fp32(monkeypatch, capsys, tmp_path: Path,
                                                        tiny_data_dir: Path) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    code = main(["train", "softmax", "--epochs", "1", "--precision", "bf16", "--device", "cpu",
                 "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and "no native bf16" in out
    assert json.loads((tmp_path / "r" / runs.METRICS_FILE).read_text())["precision"] == "fp32"
    assert json.loads((tmp_path / "r" / runs.MODEL_FILE).read_text())["precision"] == "fp32"
