"""IDX reading/writing, every rejection, the dataset registry and the real files' known facts."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mnistlab.data import (
    FILE_STEMS,
    dataset_info,
    encode_idx,
    load_dataset,
    parse_idx,
    parse_sha256sums,
    read_idx,
    sha256_of_idx_file,
    train_val_indices,
    write_idx,
)
from mnistlab.errors import MnistlabError
from tests.conftest import write_dataset_dir

IDX_DTYPES = [np.uint8, np.int8, np.dtype(">i2"), np.dtype("<i4"), np.float32, np.float64]


# ----------------------------------------------------------------------------------------- round trips
@settings(max_examples=60, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from(IDX_DTYPES),
                  shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6)))
def test_encode_parse_round_trip_any_type_and_shape(array: np.ndarray) -> None:
    back = parse_idx(encode_idx(array))
    assert back.shape == array.shape
    assert back.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", IDX_DTYPES)
def test_write_read_file_round_trip(tmp_path: Path, suffix: str, dtype: np.dtype) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((5, 7, 3)) * 100).astype(dtype)
    path = write_idx(tmp_path / f"a.idx{suffix}", array)
    raw = path.read_bytes()
    assert raw.startswith(b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    np.testing.assert_array_equal(back, array)
    assert not back.flags.writeable  # arrays handed out are read-only


def test_header_layout_is_big_endian_magic_and_dims() -> None:
    raw = encode_idx(np.zeros((3, 2), dtype=np.uint8))
    assert raw[:4] == bytes([0, 0, 0x08, 2])
    assert struct.unpack(">2I", raw[4:12]) == (3, 2)
    assert len(raw) == 12 + 6


def test_multibyte_values_are_stored_big_endian() -> None:
    raw = encode_idx(np.array([1, 256], dtype=np.int32))
    assert raw[8:] == b"\x00\x00\x00\x01\x00\x00\x01\x00"


# ------------------------------------------------------------------------------------------- rejections
GOOD = encode_idx(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "too short"),
    (b"\x00\x00", "too short"),
    (b"\x08\x03" + GOOD[2:], "not an IDX file"),
    (b"\x00\x00\x07\x02" + GOOD[4:], "unknown IDX data type"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (GOOD[:9], "truncated IDX header"),
    (GOOD[:-1], "truncated or corrupt"),
    (GOOD + b"\x00", "padded or corrupt"),
])
def test_parse_rejects_bad_bytes(raw: bytes, message: str) -> None:
    with pytest.raises(MnistlabError, match=message):
        parse_idx(raw, source="x.idx")


def test_read_rejects_corrupt_and_truncated_gzip(tmp_path: Path) -> None:
    packed = gzip.compress(GOOD)
    truncated = tmp_path / "t.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(MnistlabError, match="truncated"):
        read_idx(truncated)
    corrupt = tmp_path / "c.gz"
    corrupt.write_bytes(packed[:10] + bytes(b ^ 0xFF for b in packed[10:20]) + packed[20:])
    with pytest.raises(MnistlabError, match=r"corrupt gzip|truncated"):
        read_idx(corrupt)


def test_read_checks_sha256_of_uncompressed_bytes(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "a.gz", np.arange(10, dtype=np.uint8))
    good = hashlib.sha256(encode_idx(np.arange(10, dtype=np.uint8))).hexdigest()
    assert sha256_of_idx_file(path) == good
    read_idx(path, sha256=good)
    with pytest.raises(MnistlabError, match="SHA-256"):
        read_idx(path, sha256="0" * 64)


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MnistlabError, match="no such file"):
        read_idx(tmp_path / "nope.gz")


def test_encode_rejects_unsupported_dtype() -> None:
    with pytest.raises(MnistlabError, match="dtype"):
        encode_idx(np.zeros(3, dtype=np.complex64))


# -------------------------------------------------------------------------------------------- registry
def test_bundled_mnist_matches_published_facts(mnist) -> None:
    assert mnist.checksums == "verified"
    assert mnist.train.images.shape == (60000, 28, 28) and mnist.train.images.dtype == np.uint8
    assert mnist.test.images.shape == (10000, 28, 28) and mnist.test.labels.dtype == np.uint8
    # Facts printed in the seed / known of the canonical files.
    assert mnist.train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(mnist.train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265,
                                                        5851, 5949]
    assert np.bincount(mnist.test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert int(mnist.train.images.min()) == 0 and int(mnist.train.images.max()) == 255


def test_bundled_checksums_are_the_shared_ones() -> None:
    shipped = Path(__file__).resolve().parents[1] / "src/mnistlab/datasets/mnist/SHA256SUMS"
    sums = parse_sha256sums(shipped.read_text())
    assert sums["train-images-idx3-ubyte"] == "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    assert set(sums) == set(FILE_STEMS.values())


def test_dataset_info_counts(tiny_data_dir: Path) -> None:
    ds = load_dataset("mnist", data_dir=tiny_data_dir)
    info = dataset_info(ds)
    assert info["checksums"] == "no checksums"
    train = info["splits"]["train"]
    assert train["images_shape"] == [256, 28, 28]
    assert sum(train["label_counts"].values()) == 256
    assert train["label_counts"]["3"] == int(np.sum(ds.train.labels == 3))
    assert train["max"] == 230


def test_data_dir_with_sha256sums_is_verified(tmp_path: Path) -> None:
    directory = write_dataset_dir(tmp_path / "d", gz=False)
    lines = [f"{sha256_of_idx_file(directory / stem)}  {stem}" for stem in FILE_STEMS.values()]
    (directory / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert load_dataset(data_dir=directory).checksums == "verified"
    # Flip one pixel: the checksum must catch it even though the IDX structure is intact.
    path = directory / FILE_STEMS["test_images"]
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(MnistlabError, match="SHA-256"):
        load_dataset(data_dir=directory)


def test_data_dir_accepts_dotted_names(tmp_path: Path) -> None:
    directory = write_dataset_dir(tmp_path / "d")
    for path in directory.iterdir():
        path.rename(directory / path.name.replace("-idx", ".idx"))
    assert len(load_dataset(data_dir=directory).train) == 256


def test_data_dir_missing_file(tiny_data_dir: Path) -> None:
    (tiny_data_dir / (FILE_STEMS["test_labels"] + ".gz")).unlink()
    with pytest.raises(MnistlabError, match="t10k-labels-idx1-ubyte"):
        load_dataset(data_dir=tiny_data_dir)


def test_data_dir_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(MnistlabError, match="not a folder"):
        load_dataset(data_dir=tmp_path / "missing")


def test_unknown_dataset() -> None:
    with pytest.raises(MnistlabError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


@pytest.mark.parametrize(("role", "array", "message"), [
    ("train_labels", np.full(256, 10, dtype=np.uint8), "outside 0..9"),
    ("train_labels", np.zeros(255, dtype=np.uint8), "256 images but 255 labels"),
    ("train_images", np.zeros((256, 32, 32), dtype=np.uint8), r"\(N, 28, 28\)"),
    ("train_images", np.zeros((256, 28, 28), dtype=np.float32), "uint8"),
])
def test_inconsistent_files_are_rejected(tiny_data_dir: Path, role: str, array: np.ndarray, message: str) -> None:
    write_idx(tiny_data_dir / (FILE_STEMS[role] + ".gz"), array)
    with pytest.raises(MnistlabError, match=message):
        load_dataset(data_dir=tiny_data_dir)


def test_load_only_one_split(tiny_data_dir: Path) -> None:
    ds = load_dataset(data_dir=tiny_data_dir, splits=("test",))
    assert len(ds.test) == 64
    with pytest.raises(MnistlabError, match="not loaded"):
        ds.split("train")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_fashion_mnist_registry() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.checksums == "verified"
    assert ds.class_names[9] == "Ankle boot"
    assert ds.train.images.shape == (60000, 28, 28)
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10


# ----------------------------------------------------------------------------------------------- splits
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), fraction=st.floats(0, 0.99), seed=st.integers(0, 2**31))
def test_train_val_indices_partition(n: int, fraction: float, seed: int) -> None:
    train, val = train_val_indices(n, val_fraction=fraction, seed=seed)
    assert len(val) == round(n * fraction)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
    again = train_val_indices(n, val_fraction=fraction, seed=seed)
    np.testing.assert_array_equal(again[1], val)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_train_val_indices_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(MnistlabError, match="val-split"):
        train_val_indices(10, val_fraction=fraction, seed=0)
