"""IDX reading/writing, every rejection, the dataset registry and the real files' known facts."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mnistlab
from mnistlab import data as data_module
from mnistlab.data import (
    FILE_STEMS,
    MAX_IDX_DATA_BYTES,
    dataset_info,
    encode_idx,
    load_dataset,
    load_run_dataset,
    parse_idx,
    parse_sha256sums,
    read_idx,
    sha256_of_idx_file,
    train_val_indices,
    write_idx,
)
from mnistlab.errors import MnistlabError
from tests.clitools import run_cli
from tests.conftest import write_dataset_dir

# The source folder of the mnistlab under test, for real processes started by tests.
SOURCE_DIR = Path(mnistlab.__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
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
    assert info["dataset"] == "custom" and info["custom"] is True  # synthetic files are not MNIST
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
    with pytest.raises(MnistlabError, match="unknown dataset 'cifar'; choose one of mnist, fashion-mnist, custom"):
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


@pytest.mark.fashion_mnist  # needs Debian's dataset-fashion-mnist: a failure when missing (tests/systemdeps.py)
def test_fashion_mnist_registry() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.checksums == "verified"
    assert ds.class_names[9] == "Ankle boot"
    assert ds.train.images.shape == (60000, 28, 28)
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10
    # The same files through --data-dir are recognised by their published digests.
    again = load_dataset("fashion-mnist", data_dir=FASHION_DIR, splits=("test",))
    assert (again.name, again.custom, again.checksums, again.class_names) == (
        "fashion-mnist", False, "verified", ds.class_names)
    # Without a name they are data like any other: custom, digit names, and said so.
    plain = load_dataset(data_dir=FASHION_DIR, splits=("test",))
    assert (plain.name, plain.custom, plain.class_names[9]) == ("custom", True, "9")


# ------------------------------------------------------------------ a published name holds --data-dir to its files
def test_fashion_name_on_other_files_is_refused(capsys: pytest.CaptureFixture[str], tiny_data_dir: Path) -> None:
    # Issue 10: fashion-mnist names on other data gave a drawn 7 the name "Sneaker".
    with pytest.raises(MnistlabError, match=r"these files are not Fashion-MNIST .*SHA-256 of t10k-images-idx3-ubyte"
                                            r".*pass --dataset custom"):
        load_dataset("fashion-mnist", data_dir=tiny_data_dir, splits=("test",))
    code, out, err = run_cli(capsys, "data", "info", "--dataset", "fashion-mnist", "--data-dir", str(tiny_data_dir))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--dataset custom" in err


def test_bundled_mnist_files_through_data_dir() -> None:
    # The real MNIST files in a --data-dir are MNIST (checked by digest, not by their SHA256SUMS: none is read)...
    bundled = Path(data_module.__file__).parent / "datasets" / "mnist"
    ds = load_dataset("mnist", data_dir=bundled, splits=("test",))
    assert (ds.name, ds.custom, ds.checksums, ds.title) == ("mnist", False, "verified",
                                                           f"MNIST handwritten digits from {bundled}")
    # ...and are not Fashion-MNIST: the exact case of issue 10.
    with pytest.raises(MnistlabError, match="not Fashion-MNIST"):
        load_dataset("fashion-mnist", data_dir=bundled, splits=("test",))
    # Asked for as custom data, they load as custom data.
    assert load_dataset("custom", data_dir=bundled, splits=("test",)).custom


def test_custom_data(tiny_data_dir: Path) -> None:
    for name in ("custom", "mnist"):  # "mnist" is every caller's default name: other files become custom data
        ds = load_dataset(name, data_dir=tiny_data_dir, splits=("test",))
        assert (ds.name, ds.custom, ds.class_names) == ("custom", True, tuple("0123456789"))
        assert ds.title == f"custom data (class names 0-9) from {tiny_data_dir}"
    assert not load_dataset("mnist", splits=("test",)).custom
    with pytest.raises(MnistlabError, match="--dataset custom needs --data-dir"):
        load_dataset("custom")


def test_run_datasets_reload_under_their_recorded_names(tiny_data_dir: Path) -> None:
    # Runs recorded before "custom" existed say "mnist" with their folder; they still load (as custom data).
    for recorded in ("mnist", "custom"):
        ds = load_run_dataset({"dataset": recorded, "data_dir": str(tiny_data_dir)}, splits=("test",))
        assert ds.custom and len(ds.test) == 64
    with pytest.raises(MnistlabError, match="not Fashion-MNIST"):
        load_run_dataset({"dataset": "fashion-mnist"}, data_dir=tiny_data_dir, splits=("test",))


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


# ------------------------------------------------------------------------------ gzip exactness, bounded memory
def gzip_bomb(header: bytes, zero_mib: int) -> bytes:
    """A valid one-member gzip of ``header`` followed by ``zero_mib`` MiB of zeros, about 1 KB per MiB on disk.

    Built without deflating all of it: a 16 MiB block of zeros is deflated once, ended with a full flush (byte
    aligned, no back-references across it), and repeated; a final empty block and the CRC/size trailer close it.
    """
    block = bytes(16 << 20)
    assert zero_mib % 16 == 0 and zero_mib >= 16
    first = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = first.compress(header + block) + first.flush(zlib.Z_FULL_FLUSH)
    rest = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = rest.compress(block) + rest.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    for _ in range(zero_mib // 16):
        crc = zlib.crc32(block, crc)
    size = len(header) + (zero_mib << 20)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + head + body * (zero_mib // 16 - 1) + b"\x03\x00"
            + struct.pack("<II", crc, size & 0xFFFFFFFF))


def idx_header(*dims: int) -> bytes:
    """The header of a uint8 IDX file with ``dims``."""
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def bgzf_member(payload: bytes) -> bytes:
    """One BGZF block (bgzip's format: a gzip member with a 'BC' extra field holding the block size)."""
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = deflater.compress(payload) + deflater.flush()
    block_size = 18 + len(deflated) + 8
    header = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00" + struct.pack("<H", block_size - 1)
    return header + deflated + struct.pack("<II", zlib.crc32(payload), len(payload))


ARRAY = np.arange(5 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(5, 28, 28)
RAW = encode_idx(ARRAY)
BGZF_EOF = bgzf_member(b"")


def test_bomb_builder_makes_the_gzip_it_says() -> None:
    # The oracle for the builder is Python's gzip module, at a size small enough to expand in full.
    bomb = gzip_bomb(b"head", 32)
    assert len(bomb) < 64_000
    assert gzip.decompress(bomb) == b"head" + bytes(32 << 20)


GZIP_CASES = {
    # name: (file bytes, accepted?) - "accepted" as gzip -d accepts: exit 0 and all members' content.
    "one member": (gzip.compress(RAW), True),
    "three members, one empty": (gzip.compress(RAW[:100]) + gzip.compress(b"") + gzip.compress(RAW[100:]), True),
    "bgzip blocks": (bgzf_member(RAW[:1000]) + bgzf_member(RAW[1000:]) + BGZF_EOF, True),
    "zero padding at the end": (gzip.compress(RAW) + bytes(100), True),
    "trailing garbage": (gzip.compress(RAW) + b"garbage", False),
    "one stray byte": (gzip.compress(RAW) + b"\x1f", False),
    "zeros then another member": (gzip.compress(RAW[:100]) + bytes(4) + gzip.compress(RAW[100:]), False),
}


@pytest.mark.parametrize("case", list(GZIP_CASES))
def test_gzip_is_accepted_exactly_as_gzip_d_accepts_it(tmp_path: Path, case: str) -> None:
    packed, accepted = GZIP_CASES[case]
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(packed)
    if shutil.which("gzip"):  # the reference tool itself, when present, agrees with the table
        assert (subprocess.run(["gzip", "-dc", str(path)], capture_output=True).returncode == 0) == accepted
    if accepted:
        # Independent oracle for the content: Python's gzip (multi-member, zero padding) and the array itself.
        assert gzip.decompress(packed) == RAW
        np.testing.assert_array_equal(read_idx(path), ARRAY)
        assert sha256_of_idx_file(path) == hashlib.sha256(RAW).hexdigest()
        read_idx(path, sha256=hashlib.sha256(RAW).hexdigest(), file_sha256=hashlib.sha256(packed).hexdigest())
    else:
        for read in (read_idx, sha256_of_idx_file):
            with pytest.raises(MnistlabError, match=r"x-idx3-ubyte\.gz: unexpected data after the end of the gzip"):
                read(path)


@pytest.mark.parametrize("cut", [5, 30, -9, -4, -1])
def test_truncated_gzip_anywhere_is_refused(tmp_path: Path, cut: int) -> None:
    # In the gzip header, in the deflate data, and in the CRC/size trailer.
    packed = gzip.compress(RAW)
    path = tmp_path / "t.gz"
    path.write_bytes(packed[:cut])
    with pytest.raises(MnistlabError, match=r"t\.gz: the gzip stream is truncated"):
        read_idx(path)
    with pytest.raises(MnistlabError, match="truncated"):
        sha256_of_idx_file(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_data_shorter_or_longer_than_declared(tmp_path: Path, suffix: str) -> None:
    pack = gzip.compress if suffix else bytes
    short, long = tmp_path / f"s{suffix}", tmp_path / f"l{suffix}"
    short.write_bytes(pack(RAW[:-1]))
    long.write_bytes(pack(RAW + b"\x00"))
    with pytest.raises(MnistlabError, match=r"holds 3,919 data bytes but its header \(5, 28, 28\) needs 3,920"):
        read_idx(short)
    with pytest.raises(MnistlabError, match=r"holds more than the 3,920 data bytes its header \(5, 28, 28\)"):
        read_idx(long)


def test_gzip_bomb_is_refused_at_the_first_extra_byte_in_bounded_memory(tmp_path: Path) -> None:
    # 1 GiB of content behind a header declaring 16 images (12,544 bytes); 1 MB on disk.
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip_bomb(idx_header(16, 28, 28), 1024))
    tracemalloc.start()
    try:
        with pytest.raises(MnistlabError, match=r"bomb\.gz: holds more than the 12,544 data bytes"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20  # a few read/inflate chunks, not the gigabyte


def test_header_declaring_a_huge_size_is_refused_before_allocating(tmp_path: Path) -> None:
    # 100 GB declared: refused from the header alone, raw or gzipped, whatever follows.
    header = idx_header(100_000_000, 1000)
    for path, payload in ((tmp_path / "h", header + bytes(10)), (tmp_path / "h.gz", gzip.compress(header))):
        path.write_bytes(payload)
        with pytest.raises(MnistlabError, match=r"declares 100,000,000,000 data bytes, more than the 1,073,741,824"):
            read_idx(path)
    assert MAX_IDX_DATA_BYTES > 28 * 28 * 697_932  # EMNIST ByClass, the largest MNIST-format set, still fits


def test_raw_file_of_the_wrong_size_is_refused_before_allocating(tmp_path: Path) -> None:
    # A raw file's size is known up front: 1 GiB declared, 1 KB present, nothing of the gigabyte is allocated.
    path = tmp_path / "h"
    path.write_bytes(idx_header(1_369_000, 28, 28) + bytes(1000))
    tracemalloc.start()
    try:
        with pytest.raises(MnistlabError, match="holds 1,000 data bytes but its header"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_sha256_of_a_large_gzip_streams_and_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.gz"
    path.write_bytes(gzip_bomb(b"head", 64))
    expected = hashlib.sha256(b"head")
    for _ in range(4):
        expected.update(bytes(16 << 20))
    tracemalloc.start()
    try:
        assert sha256_of_idx_file(path) == expected.hexdigest()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20  # streamed: not the 64 MiB content
    monkeypatch.setattr(data_module, "MAX_IDX_DATA_BYTES", 1 << 20)
    with pytest.raises(MnistlabError, match=r"big\.gz: expands to more than 1,048,576 bytes"):
        sha256_of_idx_file(path)


def _bomb_folder(directory: Path, members: dict[str, bytes]) -> Path:
    write_dataset_dir(directory)
    for name, payload in members.items():
        (directory / name).write_bytes(payload)
    return directory


@pytest.mark.parametrize(("case", "declared", "message"), [
    ("1 GiB bomb behind a small header", 256 * 784, "holds more than the 200,704 data bytes"),
    ("header declaring 1 GiB, 1 MB of data", 1_369_000 * 784, "the gzip stream is truncated"),
    ("header declaring 100 GB", 0, "declares 100,000,000,000 data bytes"),
])
def test_data_info_on_a_bomb_folder_in_a_real_process(tmp_path: Path, case: str, declared: int,
                                                      message: str) -> None:
    payload = {
        "1 GiB bomb behind a small header": gzip_bomb(idx_header(256, 28, 28), 1024),
        "header declaring 1 GiB, 1 MB of data": gzip.compress(idx_header(1_369_000, 28, 28) + bytes(1 << 20))[:-20],
        "header declaring 100 GB": gzip.compress(idx_header(100_000_000, 1000)),
    }[case]
    directory = _bomb_folder(tmp_path / "d", {"train-images-idx3-ubyte.gz": payload})
    rss_file = tmp_path / "rss"
    env = {**os.environ, "PYTHONPATH": str(SOURCE_DIR)}
    # Under a 1.5 GiB address-space limit, as the launcher sets it: a bomb must not turn into a MemoryError.
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("rss_launcher.py")), str(3 << 29),
                           str(rss_file), "--", "data", "info", "--data-dir", str(directory)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "train-images-idx3-ubyte.gz" in lines[0], done.stderr
    peak = int(rss_file.read_text())
    # The goal: peak RSS <= the declared data size + 200 MB (the interpreter, numpy and the other files).
    assert peak <= declared + 200_000_000, f"peak RSS {peak:,} bytes"


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


def test_split_sha256_is_the_hash_of_the_arrays_bytes(mnist) -> None:
    """The digest a run records: the cached value, a fresh copy's and a plain hashlib over the arrays' bytes (the
    oracle) agree; a split changed with dataclasses.replace and a subset give other digests."""
    from mnistlab.data import Split, split_sha256

    test = mnist.test
    oracle = hashlib.sha256(test.images.tobytes() + test.labels.tobytes()).hexdigest()
    assert split_sha256(test) == oracle
    assert test.sha256 == oracle                      # cached on the split
    # a copy with other arrays never inherits the cached digest
    changed = dataclasses.replace(test, images=np.ascontiguousarray(test.images[::-1]))
    assert changed.sha256 is None and split_sha256(changed) != oracle
    copy = Split(np.array(test.images), np.array(test.labels))
    assert copy.sha256 is None and split_sha256(copy) == oracle
    part = test.subset(np.arange(100))
    assert part.sha256 is None
    assert split_sha256(part) == hashlib.sha256(test.images[:100].tobytes() + test.labels[:100].tobytes()).hexdigest()
    assert split_sha256(part) != oracle
