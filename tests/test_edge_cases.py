"""Inputs users get wrong, found by a review pass: each must be one clear line (exit 2) or a 4xx, never a
traceback or a 500, and never silently do something else."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistlab import runs
from mnistlab.config import TrainConfig
from mnistlab.data import FILE_STEMS, load_dataset, write_idx
from mnistlab.errors import MnistlabError
from mnistlab.imaging import prepare_image
from mnistlab.training import fit
from tests.clitools import assert_one_line_error, run_cli
from tests.conftest import write_dataset_dir


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir_shared: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("edge") / "mlp"
    fit(TrainConfig.for_model("mlp", epochs=1, batch_size=64, device="cpu"), run_dir=run_dir,
        dataset=load_dataset(data_dir=tiny_data_dir_shared))
    return run_dir


def copy_run(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
    return target


# ------------------------------------------------------------------------------------------------ reproduce
def test_reproduce_only_empty_is_an_error_not_everything(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "reproduce", "--only", "", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "--only ''")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------------- train
def test_negative_seed_is_a_flag_error_and_leaves_nothing(capsys, tmp_path: Path, tiny_data_dir: Path) -> None:
    code, _, err = run_cli(capsys, "train", "mlp", "--seed", "-1", "--data-dir", str(tiny_data_dir),
                           "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "--seed")
    assert not (tmp_path / "r").exists()


def test_default_run_dirs_are_reserved_exclusively(tmp_path: Path) -> None:
    first = runs.default_run_dir("mlp", root=tmp_path)
    second = runs.default_run_dir("mlp", root=tmp_path)
    assert first != second and first.is_dir() and second.is_dir()


def test_json_files_never_hold_bare_nan(tmp_path: Path) -> None:
    path = runs.write_json_atomic(tmp_path / "m.json", {"loss": float("nan"), "rows": [float("inf"), 1.5]})
    assert json.loads(path.read_text()) == {"loss": None, "rows": [None, 1.5]}


def test_output_path_that_is_a_folder(capsys, tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    code, _, err = run_cli(capsys, "data", "show", "--out", str(tmp_path / "folder"))
    assert_one_line_error(code, err, "is a folder")
    code, _, err = run_cli(capsys, "data", "show", "--out", "")
    assert_one_line_error(code, err)


# -------------------------------------------------------------------------------------------- run files
@pytest.mark.parametrize(("name", "content", "culprit"), [
    ("metrics.json", "[1, 2]", "metrics.json"),
    ("history.json", '{"a": 1}', "history.json"),
    ("model.json", None, "model.json"),
    ("config.json", None, "config.json"),
])
def test_damaged_run_files_are_one_line(capsys, tmp_path: Path, mlp_run: Path, name: str, content: str | None,
                                        culprit: str) -> None:
    run = copy_run(mlp_run, tmp_path / "run")
    if content is None:
        data = json.loads((run / name).read_text())
        data.update({"num_classes": "ten"} if name == "model.json" else {"val_split": "abc"})
        content = json.dumps(data)
    (run / name).write_text(content)
    code, _, err = run_cli(capsys, "evaluate", str(run), "--registry", str(tmp_path / "reg.sqlite"))
    assert_one_line_error(code, err, culprit)


def test_evaluate_after_the_data_moved(capsys, tmp_path: Path) -> None:
    data = write_dataset_dir(tmp_path / "data")
    run = fit(TrainConfig.for_model("softmax", epochs=1, device="cpu"), run_dir=tmp_path / "run",
              dataset=load_dataset(data_dir=data)).run_dir
    data.rename(tmp_path / "moved")
    registry = str(tmp_path / "reg.sqlite")
    code, _, err = run_cli(capsys, "evaluate", str(run), "--registry", registry)
    assert_one_line_error(code, err, "pass --data-dir")
    code, out, err = run_cli(capsys, "evaluate", str(run), "--json", "--registry", registry,
                             "--data-dir", str(tmp_path / "moved"))
    assert code == 0, err
    assert json.loads(out)["count"] == 64


# -------------------------------------------------------------------------------------------- checksums
def test_sha256sums_of_the_gz_files_are_verified(tmp_path: Path) -> None:
    directory = write_dataset_dir(tmp_path / "d")
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(directory.glob("*.gz"))]
    (directory / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert load_dataset(data_dir=directory).checksums == "verified"
    path = directory / (FILE_STEMS["train_labels"] + ".gz")
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw, compresslevel=1))   # same content, other bytes: the file sum catches it
    with pytest.raises(MnistlabError, match="SHA-256 of the file"):
        load_dataset(data_dir=directory)


def test_partial_sha256sums_is_not_called_verified(tmp_path: Path) -> None:
    directory = write_dataset_dir(tmp_path / "d")
    one = directory / (FILE_STEMS["test_labels"] + ".gz")
    (directory / "SHA256SUMS").write_text(f"{hashlib.sha256(one.read_bytes()).hexdigest()}  {one.name}\n")
    assert load_dataset(data_dir=directory).checksums == "partly verified"
    (directory / "SHA256SUMS").write_text("00" * 32 + "  something-else\n")
    assert load_dataset(data_dir=directory).checksums == "no checksums"


def test_unreadable_sha256sums(tmp_path: Path) -> None:
    directory = write_dataset_dir(tmp_path / "d")
    (directory / "SHA256SUMS").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MnistlabError, match="SHA256SUMS: not a readable sha256sum list"):
        load_dataset(data_dir=directory)


def test_empty_idx_files_are_rejected(tmp_path: Path) -> None:
    directory = write_dataset_dir(tmp_path / "d")
    write_idx(directory / (FILE_STEMS["test_images"] + ".gz"), np.zeros((0, 28, 28), np.uint8))
    write_idx(directory / (FILE_STEMS["test_labels"] + ".gz"), np.zeros(0, np.uint8))
    with pytest.raises(MnistlabError, match="hold no images"):
        load_dataset(data_dir=directory)


# ---------------------------------------------------------------------------------------------- images
def _tiff(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize(("payload", "message"), [
    (_tiff(Image.new("LAB", (40, 40))), "LAB colour mode"),
    (_tiff(Image.fromarray(np.full((40, 40), np.nan, np.float32), mode="F")), "NaN"),
    ([[10**400] * 28] * 28, "too large"),
])
def test_odd_images_and_arrays_are_user_errors(payload, message: str) -> None:
    with pytest.raises(MnistlabError, match=message):
        prepare_image(payload)


def test_server_answers_422_for_a_huge_number(mlp_run: Path) -> None:
    from fastapi.testclient import TestClient

    from mnistlab.serve import create_app

    client = TestClient(create_app(run_dir=mlp_run))
    body = '{"pixels": [' + ",".join(["[" + ",".join(["1" + "0" * 400] * 28) + "]"] * 28) + "]}"
    response = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "0..255" in response.json()["detail"]


def test_show_input_never_overwrites_an_input(capsys, tmp_path: Path, mlp_run: Path) -> None:
    image = tmp_path / "digit.png"
    Image.fromarray(np.pad(np.full((10, 10), 255, np.uint8), 9)).save(image)
    before = image.read_bytes()
    code, _, err = run_cli(capsys, "predict", str(mlp_run), str(image), "--show-input", str(image))
    assert_one_line_error(code, err, "would overwrite the input image")
    assert image.read_bytes() == before
    code, _, err = run_cli(capsys, "predict", str(mlp_run), str(image), "--show-input", str(tmp_path / "seen"))
    assert_one_line_error(code, err, "name a .png file")


def test_classical_run_in_predict_says_what_to_do(capsys, tmp_path: Path, tiny_data_dir_shared: Path) -> None:
    run = fit(TrainConfig.for_model("logreg", device="cpu"), run_dir=tmp_path / "lr",
              dataset=load_dataset(data_dir=tiny_data_dir_shared)).run_dir
    image = tmp_path / "digit.png"
    Image.fromarray(np.pad(np.full((10, 10), 255, np.uint8), 9)).save(image)
    code, _, err = run_cli(capsys, "predict", str(run), str(image))
    assert_one_line_error(code, err, "classical logreg model", "network run")


# -------------------------------------------------------------------------------------------- registry
def test_registry_list_edge_cases(capsys, tmp_path: Path, mlp_run: Path) -> None:
    registry = tmp_path / "reg.sqlite"
    code, out, _ = run_cli(capsys, "runs", "list", "--json", "--registry", str(registry))
    assert code == 0 and json.loads(out) == []
    registry.write_bytes(b"")
    code, out, err = run_cli(capsys, "runs", "list", "--registry", str(registry))
    assert (code, err) == (0, "") and "no runs yet" in out   # an empty registry is not an error
    assert registry.read_bytes() == b""      # reading never initialises the file
    registry.unlink()
    code, _, err = run_cli(capsys, "evaluate", str(mlp_run), "--registry", str(registry))
    assert code == 0, err
    code, _, err = run_cli(capsys, "runs", "list", "--limit", "-1", "--registry", str(registry))
    assert_one_line_error(code, err, "--limit must be >= 1")
    code, out, err = run_cli(capsys, "runs", "rm", "1", "1", "--registry", str(registry))
    assert code == 0, err
    assert out.count("forgot run 1") == 1


def test_damaged_registry_rows_are_one_line(capsys, tmp_path: Path, mlp_run: Path) -> None:
    registry = tmp_path / "reg.sqlite"
    code, _, err = run_cli(capsys, "evaluate", str(mlp_run), "--registry", str(registry))
    assert code == 0, err
    with sqlite3.connect(registry) as db:
        db.execute("UPDATE runs SET history = '{not json'")
    code, _, err = run_cli(capsys, "runs", "show", "1", "--registry", str(registry))
    assert_one_line_error(code, err, "damaged record")
    with sqlite3.connect(registry) as db:
        db.execute("UPDATE meta SET value = 'x' WHERE key = 'schema_version'")
    before = registry.read_bytes()
    code, _, err = run_cli(capsys, "runs", "list", "--registry", str(registry))
    assert_one_line_error(code, err, "schema version")
    assert registry.read_bytes() == before
