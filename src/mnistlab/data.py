"""Datasets: IDX files on disk -> verified, read-only uint8 arrays.

The IDX format (LeCun's MNIST format) is a 4-byte magic ``00 00 TYPE NDIM``, NDIM big-endian uint32
dimensions, then the values in C order, big-endian. Files may be gzipped; the checksums we verify are those
of the *uncompressed* bytes, so a re-compressed copy of the same data still verifies.

Nothing here imports torch: ``mnistlab data info`` stays fast, and the arrays stay uint8 until a training
batch converts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import struct
import zlib
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

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
# The most data bytes one IDX file may declare: 1 GiB. MNIST's largest file holds 47 MB and EMNIST ByClass (the
# largest MNIST-format set in common use) 547 MB, so real data fits with room; a header declaring more is
# refused before anything is allocated, which bounds a data command's memory at the declared sizes it accepted
# (plus the interpreter) whatever a file claims or expands to.
MAX_IDX_DATA_BYTES = 1 << 30
_MAX_IDX_HEADER = 4 + 4 * 255
_READ_CHUNK = 1 << 20       # compressed bytes read from the file at a time
_INFLATE_CHUNK = 4 << 20    # the most uncompressed bytes produced at a time


class _ContentStream:
    """A file's uncompressed bytes, produced a bounded chunk at a time and hashed as they pass.

    Raw files pass through; gzip files are inflated member by member, as ``gzip -d`` does: several members
    (``cat a.gz b.gz``, bgzip) give the concatenation of their contents, and zero bytes after the last member
    (tape padding) are ignored. Anything else after a complete member is refused as trailing data, and a stream
    that ends inside a member as truncated. ``content_sha256`` covers the bytes produced so far,
    ``file_sha256`` the bytes read from the file.
    """

    def __init__(self, fh: BinaryIO, *, source: str) -> None:
        self._fh = fh
        self._source = source
        self._offset = 0            # file bytes read so far (for naming where trailing data starts)
        self.content_sha256 = hashlib.sha256()
        self.file_sha256 = hashlib.sha256()
        self._pending = self._read_file()
        self.gzip = self._pending.startswith(_GZIP_MAGIC)
        self._inflater: Any = zlib.decompressobj(wbits=31) if self.gzip else None

    def _read_file(self, size: int = _READ_CHUNK) -> bytes:
        try:
            chunk = self._fh.read(size)
        except OSError as exc:
            raise MnistlabError(f"{self._source}: cannot read ({exc.strerror})") from None
        self._offset += len(chunk)
        self.file_sha256.update(chunk)
        return chunk

    def read(self, limit: int) -> bytes:
        """Up to ``limit`` (>= 1) next uncompressed bytes; empty only at the end of the content."""
        out = self._read_gzip(limit) if self.gzip else self._read_raw(limit)
        self.content_sha256.update(out)
        return out

    def _read_raw(self, limit: int) -> bytes:
        if self._pending:
            out, self._pending = self._pending[:limit], self._pending[limit:]
            return out
        return self._read_file(limit)

    def _read_gzip(self, limit: int) -> bytes:
        while True:
            if self._inflater is None and not self._start_member():
                return b""
            if not self._pending:
                self._pending = self._read_file()
            try:
                # max_length bounds the output of this call, however far the input would expand.
                out = self._inflater.decompress(self._pending, limit)
            except zlib.error as exc:
                raise MnistlabError(f"{self._source}: corrupt gzip data ({exc}); replace the file with a good "
                                    "copy") from None
            if self._inflater.eof:
                self._pending, self._inflater = self._inflater.unused_data, None
            else:
                self._pending = self._inflater.unconsumed_tail
                if not out and not self._pending:
                    more = self._read_file()
                    if not more:
                        raise MnistlabError(f"{self._source}: the gzip stream is truncated; replace the file with "
                                            "a complete copy")
                    self._pending = more
            if out:
                return out

    def _start_member(self) -> bool:
        """After a complete member: start the next one (True), or accept the end of the file (False)."""
        if not self._pending:
            self._pending = self._read_file()
            if not self._pending:
                return False
        if len(self._pending) < 2:
            self._pending += self._read_file()
        if self._pending.startswith(_GZIP_MAGIC):
            self._inflater = zlib.decompressobj(wbits=31)
            return True
        start = self._offset - len(self._pending)
        chunk = self._pending
        while chunk and not chunk.strip(b"\x00"):  # zero padding up to the end is what gzip -d ignores too
            chunk = self._read_file()
        if chunk:
            raise MnistlabError(f"{self._source}: unexpected data after the end of the gzip stream (from byte "
                                f"{start:,}); the file is damaged or not one gzip file, replace it with a clean copy")
        self._pending = b""
        return False

    def read_exactly(self, size: int) -> bytes:
        """``size`` bytes, or fewer only when the content ends first."""
        parts, got = [], 0
        while got < size:
            part = self.read(size - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def read_into(self, buffer: memoryview) -> int:
        """Fill ``buffer`` from the content; the number of bytes written (short only at the end)."""
        filled = 0
        while filled < len(buffer):
            part = self.read(min(len(buffer) - filled, _INFLATE_CHUNK))
            if not part:
                break
            buffer[filled:filled + len(part)] = part
            filled += len(part)
        return filled


@dataclass(frozen=True)
class _IdxHeader:
    dtype: np.dtype
    dims: tuple[int, ...]
    size: int  # header bytes

    @property
    def data_bytes(self) -> int:
        return math.prod(self.dims) * self.dtype.itemsize


def _parse_header(stream: _ContentStream | io.BytesIO, *, source: str) -> _IdxHeader:
    """Read and check the magic and dimensions; refuse a declared size over :data:`MAX_IDX_DATA_BYTES`."""
    read = stream.read_exactly if isinstance(stream, _ContentStream) else stream.read
    magic = read(4)
    if len(magic) < 4:
        raise MnistlabError(f"{source}: {len(magic)} bytes is too short to be an IDX file")
    if magic[0] != 0 or magic[1] != 0:
        raise MnistlabError(
            f"{source}: not an IDX file (magic starts {magic[:2].hex()}, expected 0000); "
            "pass the MNIST-format files (e.g. train-images-idx3-ubyte[.gz])"
        )
    type_code, ndim = magic[2], magic[3]
    if type_code not in IDX_DTYPES:
        raise MnistlabError(f"{source}: unknown IDX data type 0x{type_code:02x} in the magic number")
    if ndim == 0:
        raise MnistlabError(f"{source}: the IDX header declares 0 dimensions")
    raw_dims = read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise MnistlabError(f"{source}: truncated IDX header ({4 + len(raw_dims)} bytes, {4 + 4 * ndim} needed)")
    header = _IdxHeader(dtype=IDX_DTYPES[type_code], dims=struct.unpack(f">{ndim}I", raw_dims), size=4 + 4 * ndim)
    if header.data_bytes > MAX_IDX_DATA_BYTES:
        raise MnistlabError(f"{source}: its header {header.dims} declares {header.data_bytes:,} data bytes, more "
                            f"than the {MAX_IDX_DATA_BYTES:,} (1 GiB) mnistlab reads from one file; "
                            "the file is corrupt or not an MNIST-format dataset")
    return header


def _size_error(source: str, header: _IdxHeader, actual: int) -> MnistlabError:
    if actual < header.data_bytes:
        return MnistlabError(f"{source}: holds {actual:,} data bytes but its header {header.dims} needs "
                             f"{header.data_bytes:,}; the file is truncated or corrupt, replace it")
    return MnistlabError(f"{source}: holds more than the {header.data_bytes:,} data bytes its header {header.dims} "
                         "declares; the file is padded or corrupt, replace it")


def _as_native(buffer: np.ndarray, header: _IdxHeader) -> np.ndarray:
    """View the filled byte buffer as the declared array, byte-swapped in place (no copy) when big-endian."""
    array = buffer.view(header.dtype)
    if header.dtype.byteorder == ">":
        array.byteswap(inplace=True)
        array = buffer.view(header.dtype.newbyteorder("="))
    array = array.reshape(header.dims)
    array.flags.writeable = False
    return array


def parse_idx(raw: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX bytes into a read-only native-endian numpy array, checking every header field.

    Raises :class:`MnistlabError` for a wrong magic, an unknown type, a declared size over
    :data:`MAX_IDX_DATA_BYTES`, or a data size that does not match the declared dimensions (truncated or padded).
    """
    header = _parse_header(io.BytesIO(raw), source=source)
    actual = len(raw) - header.size
    if actual != header.data_bytes:
        raise _size_error(source, header, actual)
    buffer = np.frombuffer(raw, dtype=np.uint8, count=actual, offset=header.size)
    if header.dtype.byteorder == ">":
        buffer = buffer.copy()  # swapped in place below; native-order data stays a zero-copy view
    return _as_native(buffer, header)


def _check_digest(digest: str, expected: str, *, path: Path, what: str) -> None:
    if digest != expected.lower():
        raise MnistlabError(f"{path}: SHA-256 of {what} is {digest[:16]}…, expected {expected[:16]}…; "
                            "the file is corrupt or not the published one, replace it")


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise MnistlabError(f"{path}: no such file") from None
    except OSError as exc:
        raise MnistlabError(f"{path}: cannot read ({exc.strerror})") from None


def _read_idx_file(path: Path, *, sha256: str | None = None,
                   file_sha256: str | None = None) -> tuple[np.ndarray, str]:
    """The array and the SHA-256 of the uncompressed bytes, read in bounded memory (see :func:`read_idx`)."""
    source = str(path)
    with _open(path) as fh:
        stream = _ContentStream(fh, source=source)
        header = _parse_header(stream, source=source)
        if not stream.gzip:
            # A raw file's size is known: a mismatch is refused before the declared size is allocated.
            actual = os.fstat(fh.fileno()).st_size - header.size
            if actual != header.data_bytes:
                raise _size_error(source, header, actual)
        buffer = np.empty(header.data_bytes, dtype=np.uint8)
        filled = stream.read_into(memoryview(buffer.data))
        if filled < header.data_bytes:
            raise _size_error(source, header, filled)
        if stream.read(1):  # one byte more than declared is enough to refuse: a bomb is never expanded
            raise _size_error(source, header, header.data_bytes + 1)
    content = stream.content_sha256.hexdigest()
    if file_sha256 is not None:
        _check_digest(stream.file_sha256.hexdigest(), file_sha256, path=path, what="the file")
    if sha256 is not None:
        _check_digest(content, sha256, path=path, what="the uncompressed data")
    return _as_native(buffer, header), content


def read_idx(path: str | os.PathLike[str], *, sha256: str | None = None,
             file_sha256: str | None = None) -> np.ndarray:
    """Read a raw or gzipped IDX file of any IDX type and shape, in memory bounded by its declared size.

    The header is read and checked first (a declared size over :data:`MAX_IDX_DATA_BYTES` is refused), then
    the data is decompressed straight into an array of exactly the declared size: a stream that is longer
    (padding, a decompression bomb) is refused as soon as one byte too many appears, a shorter one as
    truncated, data after the gzip stream as trailing garbage. ``sha256`` is checked against the *uncompressed*
    bytes, ``file_sha256`` against the file as stored (what ``sha256sum *.gz`` lists), both hashed while reading
    and checked before the array is returned.
    """
    return _read_idx_file(Path(path), sha256=sha256, file_sha256=file_sha256)[0]


def decompress_if_gzip(raw: bytes, *, source: str) -> bytes:
    """Return ``raw`` unchanged, or its gunzipped content (all members) when it starts with the gzip magic.

    The output is capped at the largest IDX file mnistlab reads (header plus :data:`MAX_IDX_DATA_BYTES`).
    """
    stream = _ContentStream(io.BytesIO(raw), source=source)
    content = stream.read_exactly(_MAX_IDX_HEADER + MAX_IDX_DATA_BYTES + 1)
    if len(content) > _MAX_IDX_HEADER + MAX_IDX_DATA_BYTES:
        raise MnistlabError(f"{source}: expands to more than {MAX_IDX_DATA_BYTES:,} bytes (1 GiB), more than any "
                            "IDX file mnistlab reads; the file is corrupt or not a dataset")
    return content


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
    """SHA-256 of a (possibly gzipped) file's uncompressed bytes, as listed in SHA256SUMS; read in bounded memory."""
    path = Path(path)
    with _open(path) as fh:
        stream = _ContentStream(fh, source=str(path))
        total = 0
        while part := stream.read(_INFLATE_CHUNK):
            total += len(part)
            if total > _MAX_IDX_HEADER + MAX_IDX_DATA_BYTES:
                raise MnistlabError(f"{path}: expands to more than {MAX_IDX_DATA_BYTES:,} bytes (1 GiB), more than "
                                    "any IDX file mnistlab reads; the file is corrupt or not a dataset")
    return stream.content_sha256.hexdigest()


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
    # With --data-dir under a published name: that dataset's digests, which the files must have to be called so.
    published_sha256: Mapping[str, str] | None = None


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

# "custom": any folder of four MNIST-format files, with the digit class names 0-9.
CUSTOM = "custom"
_CUSTOM_TITLE = "custom data (class names 0-9)"
DATASET_NAMES = ("mnist", "fashion-mnist", CUSTOM)


def dataset_spec(name: str = "mnist", *, data_dir: str | os.PathLike[str] | None = None) -> DatasetSpec:
    """Resolve a dataset name (or an explicit folder of the four IDX files) to a :class:`DatasetSpec`.

    ``mnist`` is bundled with the package; ``fashion-mnist`` is found where Debian's
    ``dataset-fashion-mnist`` installs it; ``custom`` needs ``data_dir``. With ``data_dir``, that folder is used
    instead and its ``SHA256SUMS``, when present, is verified; under a published name the spec also carries that
    dataset's digests (``published_sha256``), which :func:`load_dataset` holds the files to.
    """
    if name == CUSTOM:
        if data_dir is None:
            raise MnistlabError("--dataset custom needs --data-dir: a folder holding the four IDX files "
                                f"({', '.join(FILE_STEMS.values())}, raw or .gz)")
        spec = DatasetSpec(name=CUSTOM, title=_CUSTOM_TITLE, directory=Path(data_dir), class_names=_DIGITS,
                           sha256=None, missing_hint="")
    elif name == "mnist":
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
        # A folder's own SHA256SUMS checks its files' integrity; without one we trust the bytes only as far as the
        # IDX checks go. Whether they are the published dataset is a separate question (published_sha256).
        sha256=sums, missing_hint=f"put the four files ({', '.join(FILE_STEMS.values())}) in {directory}",
        published_sha256=None if spec.name == CUSTOM else spec.sha256,
    )


def _identify(spec: DatasetSpec, digests: Mapping[str, str]) -> DatasetSpec:
    """Under a published name, a --data-dir's files must be that dataset's, checked by their SHA-256.

    ``fashion-mnist`` on other files is refused: the run would give their classes Fashion-MNIST's names.
    ``mnist`` is every caller's default name (the --dataset flag, TrainConfig, runs recorded before ``custom``
    existed), so it cannot mean the user vouched for the files: other files load as ``custom``, which has the
    same class names 0-9 and says in every output (run records, registry, reports) that the data is not MNIST.
    """
    published = spec.published_sha256
    if published is None:
        return spec
    differing = [role for role, digest in digests.items() if published.get(FILE_STEMS[role]) != digest]
    if not differing:
        return spec
    if spec.name == "mnist":
        return dataclasses.replace(spec, name=CUSTOM, title=f"{_CUSTOM_TITLE} from {spec.directory}",
                                   class_names=_DIGITS, published_sha256=None)
    stem = FILE_STEMS[differing[0]]
    title = dataset_spec(spec.name).title
    raise MnistlabError(f"--data-dir {spec.directory}: these files are not {title} (SHA-256 of {stem} is "
                        f"{digests[differing[0]][:12]}…, the published one {published.get(stem, '?')[:12]}…); "
                        "to use them as your own data with class names 0-9, pass --dataset custom")


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
    # split_sha256's cache: not an init field, so dataclasses.replace() with other arrays never carries it over.
    # The loader's arrays are read-only; code that makes them writable and edits them owns the consequences.
    sha256: str | None = field(default=None, init=False, compare=False, repr=False)

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
    def custom(self) -> bool:
        """True for files that are not a published dataset (name ``custom``, class names 0-9)."""
        return self.name == CUSTOM

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

    ``name`` is ``mnist``, ``fashion-mnist`` or ``custom``. With ``data_dir`` under a published name the files
    must be that dataset's (by SHA-256): ``fashion-mnist`` on other files is an error, ``mnist`` on other files
    (every caller's default) loads them as ``custom``; :attr:`Dataset.custom` says which it became.
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

    def read(role: str) -> tuple[np.ndarray, str]:
        return _read_idx_file(files[role], sha256=content_sums[role], file_sha256=file_sums[role])

    with ThreadPoolExecutor(max_workers=len(roles)) as pool:
        results = dict(zip(roles, pool.map(read, roles), strict=True))
    arrays = {role: array for role, (array, _) in results.items()}
    named = _identify(spec, {role: digest for role, (_, digest) in results.items()})
    if named.published_sha256 is not None:
        verified = roles  # every file has the published dataset's SHA-256
    spec = named
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
        "custom": dataset.custom,
        "title": dataset.title,
        "checksums": dataset.checksums,
        "files": {role: str(path) for role, path in dataset.files.items()},
        "class_names": list(dataset.class_names),
        "splits": splits,
    }


def split_sha256(split: Split) -> str:
    """SHA-256 of a loaded split's images and labels (as arrays, whatever files they came from): what a run
    records so that scoring it on other data can be told apart from its own test score."""
    if split.sha256 is None:  # hashed once per split, when first asked (data info and predict never ask)
        object.__setattr__(split, "sha256", _arrays_sha256(split.images, split.labels))
    assert split.sha256 is not None
    return split.sha256


def _arrays_sha256(*arrays: np.ndarray) -> str:
    # The arrays' own buffers are hashed (no tobytes() copy of 47 MB); hashlib releases the GIL meanwhile.
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).data)  # the buffer itself, no copy
    return digest.hexdigest()
