"""Datasets: IDX files on disk -> verified, read-only uint8 arrays.

The IDX format (LeCun's MNIST format) is a 4-byte magic ``00 00 TYPE NDIM``, NDIM big-endian uint32
dimensions, then the values in C order, big-endian. Files may be gzipped; the checksums we verify are those
of the *uncompressed* bytes, so a re-compressed copy of the same data still verifies.

Nothing here imports torch: ``mnistlab data info`` stays fast, and the arrays stay uint8 until a training
batch converts them.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import zlib
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from mnistlab.errors import MnistlabError

SplitName = Literal["train", "test"]
SPLITS: tuple[SplitName, ...] = get_args(SplitName)

# IDX type byte -> numpy dtype (big-endian as stored).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"

# The four files of an MNIST-format dataset, by role. The canonical names use dashes; some mirrors use a dot
# before "idx", and both are accepted, with or without ".gz".
FILE_STEMS: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

ChecksumStatus = Literal["verified", "partly verified", "no checksums"]


# --------------------------------------------------------------------------------------------- IDX format
def decompress_if_gzip(raw: bytes, *, source: str) -> bytes:
    """Return ``raw`` unchanged, or its gunzipped content when it starts with the gzip magic."""
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        # wbits=47: auto-detect gzip/zlib header; one C call (releases the GIL) instead of GzipFile's loop.
        decompressor = zlib.decompressobj(wbits=47)
        out = decompressor.decompress(raw) + decompressor.flush()
    except zlib.error as exc:
        raise MnistlabError(f"{source}: corrupt gzip data ({exc}); replace the file with a good copy") from None
    if not decompressor.eof:
        raise MnistlabError(f"{source}: the gzip stream is truncated; replace the file with a complete copy")
    return out


def parse_idx(raw: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX bytes into a read-only native-endian numpy array, checking every header field.

    Raises :class:`MnistlabError` for a wrong magic, an unknown type, or a data size that does not match the
    declared dimensions (a truncated or padded file).
    """
    if len(raw) < 4:
        raise MnistlabError(f"{source}: {len(raw)} bytes is too short to be an IDX file")
    if raw[0] != 0 or raw[1] != 0:
        raise MnistlabError(
            f"{source}: not an IDX file (magic starts {raw[:2].hex()}, expected 0000); "
            "pass the MNIST-format files (e.g. train-images-idx3-ubyte[.gz])"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_DTYPES:
        raise MnistlabError(f"{source}: unknown IDX data type 0x{type_code:02x} in the magic number")
    if ndim == 0:
        raise MnistlabError(f"{source}: the IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MnistlabError(f"{source}: truncated IDX header ({len(raw)} bytes, {header} needed)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[type_code]
    count = math.prod(dims)
    expected = count * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        raise MnistlabError(
            f"{source}: holds {actual:,} data bytes but its header {tuple(dims)} needs {expected:,}; "
            "the file is truncated or corrupt, replace it"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    if dtype.byteorder == ">":
        array = array.astype(dtype.newbyteorder("="))
    array.flags.writeable = False
    return array


def _check_digest(data: bytes, expected: str, *, path: Path, what: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.lower():
        raise MnistlabError(f"{path}: SHA-256 of {what} is {digest[:16]}…, expected {expected[:16]}…; "
                            "the file is corrupt or not the published one, replace it")


def read_idx(path: str | os.PathLike[str], *, sha256: str | None = None,
             file_sha256: str | None = None) -> np.ndarray:
    """Read a raw or gzipped IDX file of any IDX type and shape.

    ``sha256`` is checked against the *uncompressed* bytes, ``file_sha256`` against the file as stored (what
    ``sha256sum *.gz`` lists), both before parsing.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MnistlabError(f"{path}: no such file") from None
    except OSError as exc:
        raise MnistlabError(f"{path}: cannot read ({exc.strerror})") from None
    if file_sha256 is not None:
        _check_digest(raw, file_sha256, path=path, what="the file")
    raw = decompress_if_gzip(raw, source=str(path))
    if sha256 is not None:
        _check_digest(raw, sha256, path=path, what="the uncompressed data")
    return parse_idx(raw, source=str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a numpy array as IDX bytes (the inverse of :func:`parse_idx`)."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise MnistlabError(f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, int16, int32, "
                            "float32, float64")
    if array.ndim == 0 or array.ndim > 255:
        raise MnistlabError(f"IDX stores 1 to 255 dimensions, not {array.ndim}")
    code = _IDX_CODES[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzipped when the name ends in ``.gz``; written atomically."""
    import gzip

    from mnistlab.runs import write_bytes_atomic

    path = Path(path)
    payload = encode_idx(array)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    write_bytes_atomic(path, payload)
    return path


def sha256_of_idx_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a (possibly gzipped) file's uncompressed bytes, as listed in SHA256SUMS."""
    path = Path(path)
    return hashlib.sha256(decompress_if_gzip(path.read_bytes(), source=str(path))).hexdigest()


def parse_sha256sums(text: str) -> dict[str, str]:
    """Parse ``sha256sum`` output (``HEX  NAME`` per line) into {name: hex}."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


# ------------------------------------------------------------------------------------- dataset registry
@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: where its four files live and what their uncompressed SHA-256 must be."""

    name: str
    title: str
    directory: Path
    class_names: tuple[str, ...]
    sha256: Mapping[str, str] | None
    missing_hint: str


_PACKAGE_DATA = Path(__file__).parent / "datasets"
_DIGITS = tuple(str(d) for d in range(10))
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# SHA-256 of the uncompressed Fashion-MNIST files (zalandoresearch/fashion-mnist, as packaged by Debian).
_FASHION_SHA256 = {
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

DATASET_NAMES = ("mnist", "fashion-mnist")


def dataset_spec(name: str = "mnist", *, data_dir: str | os.PathLike[str] | None = None) -> DatasetSpec:
    """Resolve a dataset name (or an explicit folder of the four IDX files) to a :class:`DatasetSpec`.

    ``mnist`` is bundled with the package; ``fashion-mnist`` is found where Debian's
    ``dataset-fashion-mnist`` installs it. With ``data_dir``, that folder is used instead (``name`` then only
    gives the class names); its ``SHA256SUMS``, when present, is verified.
    """
    if name == "mnist":
        directory = _PACKAGE_DATA / "mnist"
        spec = DatasetSpec(
            name="mnist", title="MNIST handwritten digits", directory=directory, class_names=_DIGITS,
            sha256=parse_sha256sums((directory / "SHA256SUMS").read_text()),
            missing_hint="reinstall mnistlab (the MNIST files ship inside the package)",
        )
    elif name == "fashion-mnist":
        spec = DatasetSpec(
            name="fashion-mnist", title="Fashion-MNIST (Zalando)", directory=FASHION_MNIST_DIR,
            class_names=_FASHION_CLASSES, sha256=_FASHION_SHA256,
            missing_hint="install it with `apt-get install dataset-fashion-mnist`, or pass --data-dir",
        )
    else:
        raise MnistlabError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}, "
                            "or pass --data-dir with a folder of the four IDX files")
    if data_dir is None:
        return spec
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise MnistlabError(f"--data-dir {directory}: not a folder; pass a folder holding the four IDX files")
    sums_file = directory / "SHA256SUMS"
    sums = None
    if sums_file.is_file():
        try:
            sums = parse_sha256sums(sums_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise MnistlabError(f"{sums_file}: not a readable sha256sum list ({exc}); fix or remove it") from None
    return DatasetSpec(
        name=spec.name, title=f"{spec.title} from {directory}", directory=directory,
        class_names=spec.class_names,
        # A folder's own SHA256SUMS wins; without one we trust the bytes only as far as the IDX checks go.
        sha256=sums, missing_hint=f"put the four files ({', '.join(FILE_STEMS.values())}) in {directory}",
    )


def locate_file(spec: DatasetSpec, role: str) -> Path:
    """Find the file for ``role`` (e.g. ``train_images``) in the spec's folder, raw or gzipped."""
    stem = FILE_STEMS[role]
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = spec.directory / candidate
        if path.is_file():
            return path
    raise MnistlabError(f"{spec.name}: {spec.directory} has no {stem}[.gz]; {spec.missing_hint}")


@dataclass(frozen=True)
class Split:
    """One split: ``images`` (N, 28, 28) uint8 and ``labels`` (N,) uint8, both read-only."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray) -> Split:
        """The samples at ``indices`` (a copy, still uint8)."""
        return Split(images=self.images[indices], labels=self.labels[indices])


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: the splits that were asked for, where they came from, and their checksum status."""

    name: str
    title: str
    class_names: tuple[str, ...]
    files: Mapping[str, Path]
    checksums: ChecksumStatus
    splits: Mapping[str, Split] = field(default_factory=dict)
    data_dir: str | None = None  # the --data-dir it came from; None for the registry's own location

    @property
    def train(self) -> Split:
        """The training split."""
        return self.split("train")

    @property
    def test(self) -> Split:
        """The test split."""
        return self.split("test")

    def split(self, name: str) -> Split:
        """The split called ``name`` (``train`` or ``test``)."""
        if name not in self.splits:
            raise MnistlabError(f"split {name!r} is not loaded; choose one of {', '.join(self.splits)}")
        return self.splits[name]


def _check_split(images: np.ndarray, labels: np.ndarray, *, where: str, num_classes: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise MnistlabError(f"{where}: images must be uint8 of shape (N, 28, 28), got {images.dtype} "
                            f"{images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise MnistlabError(f"{where}: labels must be a uint8 vector, got {labels.dtype} {labels.shape}")
    if images.shape[0] == 0:
        raise MnistlabError(f"{where}: the files hold no images; use complete IDX files")
    if images.shape[0] != labels.shape[0]:
        raise MnistlabError(f"{where}: {images.shape[0]:,} images but {labels.shape[0]:,} labels")
    if labels.size and int(labels.max()) >= num_classes:
        raise MnistlabError(f"{where}: label {int(labels.max())} is outside 0..{num_classes - 1}")


def load_dataset(
    name: str = "mnist",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    splits: tuple[SplitName, ...] = SPLITS,
) -> Dataset:
    """Load and verify a dataset's splits as read-only uint8 arrays.

    Each file is checked for its IDX header, its size and (where known) the SHA-256 of its uncompressed
    bytes before any of it is used. Files are read in parallel threads (decompression releases the GIL).
    """
    spec = dataset_spec(name, data_dir=data_dir)
    for split in splits:
        if split not in SPLITS:
            raise MnistlabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    roles = [f"{split}_{kind}" for split in splits for kind in ("images", "labels")]
    files = {role: locate_file(spec, role) for role in roles}

    sums = spec.sha256 or {}
    # A SHA256SUMS may list the uncompressed stems (as the canonical one does) or the files as stored.
    content_sums = {role: sums.get(FILE_STEMS[role]) for role in roles}
    file_sums = {role: sums.get(files[role].name) for role in roles}
    verified = [role for role in roles if content_sums[role] or file_sums[role]]

    def read(role: str) -> np.ndarray:
        return read_idx(files[role], sha256=content_sums[role], file_sha256=file_sums[role])

    with ThreadPoolExecutor(max_workers=len(roles)) as pool:
        arrays = dict(zip(roles, pool.map(read, roles), strict=True))
    loaded: dict[str, Split] = {}
    for split in splits:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_split(images, labels, where=f"{spec.name} {split}", num_classes=len(spec.class_names))
        loaded[split] = Split(images=images, labels=labels)
    return Dataset(
        name=spec.name, title=spec.title, class_names=spec.class_names, files=files,
        checksums="verified" if len(verified) == len(roles) else ("partly verified" if verified else "no checksums"),
        splits=loaded,
        data_dir=str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None,
    )


def load_run_dataset(
    run_config: Mapping[str, object],
    *,
    splits: tuple[SplitName, ...] = SPLITS,
    data_dir: str | os.PathLike[str] | None = None,
    run_name: str = "the run",
) -> Dataset:
    """Load the dataset a run was trained on (its ``config.json``), or the same files from ``data_dir``.

    When the recorded folder cannot be read any more, the error says to pass ``--data-dir``.
    """
    name = str(run_config.get("dataset", "mnist"))
    if data_dir is not None:
        return load_dataset(name, data_dir=data_dir, splits=splits)
    recorded = run_config.get("data_dir")
    try:
        return load_dataset(name, data_dir=recorded, splits=splits)  # type: ignore[arg-type]
    except MnistlabError as exc:
        if recorded is None:
            raise
        raise MnistlabError(f"{run_name} was trained on the files in {recorded}, which cannot be read now "
                            f"({exc}); pass --data-dir with their new folder") from None


def load_dataset_in_background(
    name: str = "mnist",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    splits: tuple[SplitName, ...] = SPLITS,
) -> Future[Dataset]:
    """Start :func:`load_dataset` in a thread and return its future (``.result()`` raises its errors).

    The CLI starts this before importing torch: decompression and hashing release the GIL, so reading and
    verifying the files overlaps the 1-2 s torch import instead of following it.
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnistlab-data")
    future = executor.submit(load_dataset, name, data_dir=data_dir, splits=splits)
    executor.shutdown(wait=False)
    return future


def train_val_indices(n: int, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into seeded random train and validation index arrays (validation of round(n * fraction))."""
    if not 0.0 <= val_fraction < 1.0:
        raise MnistlabError(f"--val-split must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = round(n * val_fraction)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def dataset_info(dataset: Dataset) -> dict[str, object]:
    """A JSON-friendly summary: per split shape, dtype, value range and label counts, plus checksum status."""
    splits: dict[str, object] = {}
    for split_name, split in dataset.splits.items():
        counts = np.bincount(split.labels, minlength=len(dataset.class_names))
        splits[split_name] = {
            "images_shape": list(split.images.shape),
            "images_dtype": str(split.images.dtype),
            "labels_shape": list(split.labels.shape),
            "labels_dtype": str(split.labels.dtype),
            "min": int(split.images.min()),
            "max": int(split.images.max()),
            "mean": round(float(split.images.mean(dtype=np.float64)), 4),
            "label_counts": {str(label): int(count) for label, count in enumerate(counts)},
        }
    return {
        "dataset": dataset.name,
        "title": dataset.title,
        "checksums": dataset.checksums,
        "files": {role: str(path) for role, path in dataset.files.items()},
        "class_names": list(dataset.class_names),
        "splits": splits,
    }
