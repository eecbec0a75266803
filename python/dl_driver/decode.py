"""Samples decoded as the files hold them, from the bytes the reader pipeline hands over (numpy only).

npy and npz give their arrays (``x``, and ``y`` where present) with their dtype and shape, as views of the sample's
bytes when the array is stored uncompressed (no copy; read-only: ``.copy()`` gives a writable one); a deflated npz
member is inflated. hdf5 gives the sample's row of each ``records_*`` dataset by name, as views too when the pipeline
mapped the file's rows (contiguous datasets, as dl-driver writes them; the batch says their dtype and shape), else
through h5py from the whole file (DLIO's files: ``pip install h5py``). A tfrecord record gives its
``tf.train.Example`` features (a single bytes value as a uint8 view, int64 and float lists as arrays; the pipeline has
checked the record's CRCs). jpeg and png give their pixels (Pillow decodes them). Other formats have no decoder yet:
:func:`decode` raises ``FormatError`` naming the format.
"""

from __future__ import annotations

import io
import itertools
import struct
import zipfile
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

from dl_driver import _core
from dl_driver._core import FormatError
from dl_driver.storage import SeekableReader

Sample = dict[str, npt.NDArray[Any]]
DECODED = ("npy", "npz", "hdf5", "tfrecord", "jpeg", "png")
#: What the pipeline says an hdf5 sample's bytes are: the datasets (a row of each, back to back), dtype, row shape.
Rows = tuple[list[str], str, list[int]]


class _View(SeekableReader):
    """A read-only, seekable file over a memoryview (zipfile and numpy's header readers read small parts of it)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__(len(view))
        self._view = view

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        n = max(0, min(len(target), self._size - self._at))
        target[:n] = self._view[self._at : self._at + n]
        self._at += n
        return n


def _npy(view: memoryview, where: str) -> npt.NDArray[Any]:
    """The array of an .npy file's bytes, a view of them."""
    f = _View(view)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except ValueError as e:
        raise FormatError(f"{where}: not an .npy array: {e}") from e
    if dtype.hasobject:
        raise FormatError(f"{where}: holds Python objects, which are not read")
    count = int(np.prod(shape, dtype=np.int64))
    if f.tell() + count * dtype.itemsize > len(view):
        raise FormatError(f"{where}: the header says {shape} {dtype}, the file is {len(view)} bytes")
    flat = np.frombuffer(view, dtype=dtype, count=count, offset=f.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def _npz(view: memoryview, where: str) -> Sample:
    f = _View(view)
    try:
        archive = zipfile.ZipFile(f)
    except zipfile.BadZipFile as e:
        raise FormatError(f"{where}: not an npz (zip) archive: {e}") from e
    out: Sample = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            continue
        local = view[info.header_offset : info.header_offset + 30]
        if len(local) < 30 or bytes(local[:4]) != b"PK\x03\x04":
            raise FormatError(f"{where}: {info.filename}: no local file header at {info.header_offset}")
        name_len, extra_len = struct.unpack_from("<HH", local, 26)
        start = info.header_offset + 30 + name_len + extra_len
        data = view[start : start + info.compress_size]
        member = f"{where}: {info.filename}"
        if info.compress_type == zipfile.ZIP_STORED:
            out[info.filename[: -len(".npy")]] = _npy(data, member)
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            out[info.filename[: -len(".npy")]] = _npy(memoryview(zlib.decompress(data, -15)), member)
        else:
            raise FormatError(f"{member}: compression {info.compress_type} (only stored and deflated are read)")
    return out


def _varint(view: memoryview, at: int, where: str) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(view) or shift > 63:
            raise FormatError(f"{where}: a truncated protobuf varint")
        b = view[at]
        value |= (b & 0x7F) << shift
        at += 1
        if b < 0x80:
            return value, at
        shift += 7


def _fields(view: memoryview, where: str) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message: varints as ints, length-delimited as views."""
    out: list[tuple[int, int, Any]] = []
    at = 0
    while at < len(view):
        key, at = _varint(view, at, where)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == 0:
            value, at = _varint(view, at, where)
        elif wire == 2:
            n, at = _varint(view, at, where)
            if at + n > len(view):
                raise FormatError(f"{where}: a field runs past the record")
            value, at = view[at : at + n], at + n
        elif wire == 5:
            value, at = view[at : at + 4], at + 4
        elif wire == 1:
            value, at = view[at : at + 8], at + 8
        else:
            raise FormatError(f"{where}: protobuf wire type {wire} is not a tf.train.Example's")
        out.append((number, wire, value))
    return out


def _feature(view: memoryview, where: str) -> npt.NDArray[Any]:
    """One tf.train.Feature: bytes_list (1), float_list (2) or int64_list (3)."""
    for number, _, value in _fields(view, where):
        values = [v for n, _, v in _fields(value, where) if n == 1]
        if number == 1:
            if len(values) == 1:
                return np.frombuffer(values[0], dtype=np.uint8)
            return np.array([bytes(v) for v in values], dtype=object)
        if number == 2:
            packed = [v for v in values if isinstance(v, memoryview)]
            return np.concatenate([np.frombuffer(v, dtype="<f4") for v in packed]) if packed else np.zeros(0, "<f4")
        if number == 3:
            ints: list[int] = []
            for v in values:
                if isinstance(v, memoryview):  # packed
                    at = 0
                    while at < len(v):
                        x, at = _varint(v, at, where)
                        ints.append(x)
                else:
                    ints.append(v)
            return np.array([x - (1 << 64) if x >= 1 << 63 else x for x in ints], dtype=np.int64)
    return np.zeros(0, dtype=np.uint8)


def _tfrecord(view: memoryview, where: str) -> Sample:
    """A framed TFRecord (length, its masked CRC, the Example, its masked CRC) as the Example's features."""
    if len(view) < 16:
        raise FormatError(f"{where}: a TFRecord record of {len(view)} bytes (a record has at least 16)")
    (length,) = struct.unpack_from("<Q", view, 0)
    if 12 + length + 4 != len(view):
        raise FormatError(f"{where}: the record's length field says {length} bytes, the record holds {len(view) - 16}")
    example = view[12 : 12 + length]
    out: Sample = {}
    for number, _, features in _fields(example, where):
        if number != 1:
            continue
        for n, _, entry in _fields(features, where):
            if n != 1:
                continue
            key, value = "", memoryview(b"")
            for k, _, v in _fields(entry, where):
                if k == 1:
                    key = bytes(v).decode()
                elif k == 2:
                    value = v
            out[key] = _feature(value, f"{where}: feature '{key}'")
    return out


def _dataset_order(name: str) -> tuple[int, str]:
    """records_0, records_1, ..., records_10 in number order; other names after them, by name."""
    number = name[len("records_") :]
    return (int(number), "") if number.isdigit() else (1 << 62, name)


def _hdf5(view: memoryview, where: str, rows: Rows | None, index: int) -> Sample:
    if rows is not None:
        names, dtype_name, dims = rows
        dtype = np.dtype(dtype_name)
        row = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        if len(view) != row * len(names):
            raise FormatError(f"{where}: {len(view)} bytes, rows of {names} of {dims} {dtype_name} are {row} each")
        return {
            name: np.frombuffer(view, dtype=dtype, count=row // dtype.itemsize, offset=i * row).reshape(dims)
            for i, name in enumerate(names)
        }
    try:
        import h5py  # type: ignore[import-untyped]
    except ImportError as e:
        raise FormatError(f"{where}: decoding this hdf5 file's samples needs h5py: pip install h5py ({e})") from e
    try:
        with h5py.File(io.BytesIO(view), "r") as f:
            names = sorted((n for n in f if n.startswith("records_")), key=_dataset_order)
            if not names:
                raise FormatError(f"{where}: an hdf5 file without records_* datasets (has {sorted(f)})")
            return {name: np.asarray(f[name][index]) for name in names}
    except (OSError, ValueError, IndexError) as e:
        raise FormatError(f"{where}: not a readable hdf5 file with sample {index}: {e}") from e


def _image(view: memoryview, where: str) -> Sample:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise FormatError(f"{where}: decoding jpeg and png samples needs Pillow: pip install Pillow ({e})") from e

    try:
        with Image.open(io.BytesIO(view)) as image:
            return {"x": np.asarray(image)}
    except (UnidentifiedImageError, OSError) as e:
        raise FormatError(f"{where}: not a readable image: {e}") from e


def batch_samples(fmt: str, batch: _core.PyBatch, where: str, raw: bool, samples_per_file: int) -> Any:
    """One pipeline batch as the samples' arrays stacked by name (``raw``: a list of each sample's bytes)."""
    data = memoryview(batch.data)
    if raw:
        return [bytes(data[s:e]) for s, e in batch.spans]
    items = [
        decode(fmt, data[s:e], f"sample {i} ({where})", rows=rows, index=i % samples_per_file)
        for (s, e), i, rows in zip(batch.spans, batch.samples, batch.arrays, strict=True)
    ]
    start = np.frombuffer(data, dtype=np.uint8).__array_interface__["data"][0] if len(data) else 0
    out = {}
    for name in items[0]:
        arrays = [item[name] for item in items]
        shapes = sorted({a.shape for a in arrays})
        if len(shapes) > 1:
            raise FormatError(
                f"'{name}' of the batch's samples has shapes {shapes[0]} and {shapes[1]} ({where}): one array needs one"
                " shape; use batch_size=None (single samples) or raw=True"
            )
        out[name] = stack(arrays, (start, start + len(data)))
    return out


def stack(arrays: list[npt.NDArray[Any]], within: tuple[int, int]) -> npt.NDArray[Any]:
    """The arrays along a new first axis. Views of one batch buffer (addresses in ``within``) that lie at equal steps
    with one shape, dtype and strides -- the samples of files of one layout -- give a read-only view of that buffer
    (no copy); other arrays are copied (``np.stack``)."""
    first = arrays[0]
    at = [a.__array_interface__["data"][0] for a in arrays]
    step = at[1] - at[0] if len(arrays) > 1 else 0
    span = max([0, *(s * (n - 1) for s, n in zip(first.strides, first.shape, strict=True))]) + first.itemsize
    if (
        len(arrays) > 1
        and not first.flags.writeable
        and first.dtype != object
        and step > 0
        and step % first.itemsize == 0
        and all(s >= 0 for s in first.strides)
        and within[0] <= at[0]
        and at[-1] + span <= within[1]
        and all(b - a == step for a, b in itertools.pairwise(at))
        and all(a.shape == first.shape and a.dtype == first.dtype and a.strides == first.strides for a in arrays)
    ):
        return np.lib.stride_tricks.as_strided(
            first, (len(arrays), *first.shape), (step, *first.strides), writeable=False
        )
    return np.stack(arrays)


def decode(fmt: str, view: memoryview, where: str = "sample", *, rows: Rows | None = None, index: int = 0) -> Sample:
    """The arrays of one sample of format ``fmt`` (one of :data:`DECODED`) from its bytes ``view``; for hdf5, what the
    pipeline says they are (``rows``), else the whole file's bytes and the sample's ``index`` in the file."""
    if fmt == "npy":
        return {"x": _npy(view, where)}
    if fmt == "npz":
        return _npz(view, where)
    if fmt == "tfrecord":
        return _tfrecord(view, where)
    if fmt == "hdf5":
        return _hdf5(view, where, rows, index)
    if fmt in ("jpeg", "png"):
        return _image(view, where)
    raise FormatError(
        f"dataset.format '{fmt}': samples are not decoded yet (decoded: {', '.join(DECODED)}); use raw=True"
    )
