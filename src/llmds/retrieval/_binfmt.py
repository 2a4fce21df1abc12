"""Versioned, checksummed, atomically written container of numpy arrays.

Shared by every structure that saves itself (inverted index, HNSW).  No pickle:
a file holds only raw little-endian numeric bytes and a JSON header.

Layout (all integers little-endian)::

    magic            len(magic) bytes, chosen by the caller (e.g. b"LLMDSIDX")
    version          u32, the caller's format version
    header_len       u64
    header           header_len bytes of UTF-8 JSON:
                     {"meta": <caller's dict>, "data_nbytes": int,
                      "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}, ...]}
    padding          zeros up to the next multiple of ALIGN (from file start)
    data             the arrays' raw C-order bytes; each ``offset`` is relative to
                     the start of ``data`` and a multiple of ALIGN
    checksum         blake2b (digest_size=DIGEST_SIZE) of every byte before it

Writes go to a temporary file in the destination directory, are fsync'ed and
then ``os.replace``'d over the target, so a crash leaves either the old file or
the new one, never a torn one.  Any truncation, flipped byte, wrong magic or
unsupported version raises :class:`llmds.errors.CorruptFileError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from llmds._checks import check_int
from llmds.errors import CorruptFileError, ValidationError

__all__ = ["ALIGN", "DIGEST_SIZE", "read_checked", "write_atomic"]

ALIGN = 64
DIGEST_SIZE = 32
_PREFIX = struct.Struct("<IQ")  # version, header_len
# Numeric kinds only: bool, signed/unsigned int, float, complex.  Object,
# string and structured dtypes could smuggle pickles or are not portable.
_ALLOWED_KINDS = frozenset("biufc")


def _pad(n: int) -> int:
    return (-n) % ALIGN


def _le_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian form of ``dtype`` (what goes on disk)."""
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def write_atomic(
    path: str | os.PathLike,
    magic: bytes,
    version: int,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
) -> None:
    """Write ``arrays`` and ``meta`` to ``path`` atomically.

    Parameters
    ----------
    path : str or PathLike
        Destination file.  Its directory must exist.
    magic : bytes
        Non-empty format identifier written first and checked on read.
    version : int
        Format version (0 <= version < 2**32).
    arrays : mapping of str to ndarray
        Numeric arrays (bool/int/uint/float/complex), saved in C order,
        little-endian.  Names must be unique strings.
    meta : mapping
        JSON-serialisable metadata (no NaN/inf).

    Raises
    ------
    ValidationError
        Bad magic/version, a non-numeric array or non-JSON metadata.  Nothing is
        written in that case.
    """
    if not isinstance(magic, bytes) or not magic:
        raise ValidationError("magic must be non-empty bytes, e.g. b'LLMDSIDX'")
    check_int("version", version, 0, 2**32 - 1)

    # Validate and lay out every array before touching the disk.
    prepared: list[np.ndarray] = []
    entries: list[dict[str, Any]] = []
    offset = 0
    for name, arr in arrays.items():
        if not isinstance(name, str):
            raise ValidationError(f"array names must be str, got {name!r}")
        a = np.asarray(arr)
        if a.dtype.kind not in _ALLOWED_KINDS:
            raise ValidationError(
                f"array {name!r} has dtype {a.dtype}; only numeric dtypes can be saved"
            )
        a = np.asarray(a, dtype=_le_dtype(a.dtype), order="C")  # keeps 0-d shape
        entries.append(
            {
                "name": name,
                "dtype": a.dtype.str,
                "shape": list(a.shape),
                "offset": offset,
                "nbytes": int(a.nbytes),
            }
        )
        prepared.append(a)
        offset += a.nbytes + _pad(a.nbytes)
    header_obj = {"meta": dict(meta), "data_nbytes": offset, "arrays": entries}
    try:
        header = json.dumps(header_obj, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"meta must be JSON-serialisable (no NaN/inf): {exc}") from exc

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
    )
    try:
        hasher = hashlib.blake2b(digest_size=DIGEST_SIZE)
        with os.fdopen(fd, "wb") as f:

            def put(buf) -> None:
                hasher.update(buf)
                f.write(buf)

            head = magic + _PREFIX.pack(version, len(header)) + header
            put(head)
            put(b"\0" * _pad(len(head)))
            for a in prepared:
                # reshape(-1) handles 0-d arrays; view(uint8) writes without a copy.
                put(memoryview(a.reshape(-1).view(np.uint8)))
                put(b"\0" * _pad(a.nbytes))
            f.write(hasher.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    """Make the rename durable; best effort (not supported on every OS)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def read_checked(
    path: str | os.PathLike,
    magic: bytes,
    supported_versions: Iterable[int],
) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`write_atomic`, verifying everything.

    Parameters
    ----------
    path : str or PathLike
        File to read.
    magic : bytes
        Expected format identifier.
    supported_versions : iterable of int
        Versions the caller can decode.

    Returns
    -------
    (version, arrays, meta)
        ``arrays`` maps names to writeable ndarrays (views of one buffer, no
        per-array copy); ``meta`` is the caller's metadata dict.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    CorruptFileError
        Wrong magic, unsupported version, truncation, trailing bytes, a checksum
        mismatch or an inconsistent header.
    """
    path = os.fspath(path)
    supported = sorted({int(v) for v in supported_versions})
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        got = f.readinto(buf)
    if got != size:
        raise CorruptFileError(f"{path}: file changed while reading ({got} of {size} bytes)")
    mv = memoryview(buf)

    fixed = len(magic) + _PREFIX.size
    if size < len(magic) or bytes(mv[: len(magic)]) != magic:
        raise CorruptFileError(
            f"{path}: not a {magic.decode('ascii', 'replace')} file (wrong magic bytes); "
            "was it written by this structure's save()?"
        )
    if size < fixed + DIGEST_SIZE:
        raise CorruptFileError(f"{path}: truncated ({size} bytes); save the structure again")
    version, header_len = _PREFIX.unpack_from(mv, len(magic))
    if version not in supported:
        raise CorruptFileError(
            f"{path}: format version {version} is not supported (this llmds reads {supported}); "
            "re-save it with a matching llmds version"
        )
    body_end = size - DIGEST_SIZE
    digest = hashlib.blake2b(mv[:body_end], digest_size=DIGEST_SIZE).digest()
    if digest != bytes(mv[body_end:]):
        raise CorruptFileError(
            f"{path}: checksum mismatch (file truncated or corrupted); restore it from the original"
        )
    # The checksum passed, so the rest is what write_atomic produced unless a
    # different writer made it; still check every bound rather than trust it.
    header_end = fixed + header_len
    if header_end > body_end:
        raise CorruptFileError(f"{path}: header runs past the end of the file")
    try:
        header = json.loads(bytes(mv[fixed:header_end]).decode("utf-8"))
        meta = header["meta"]
        data_nbytes = int(header["data_nbytes"])
        entries = header["arrays"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{path}: unreadable header: {exc}") from exc
    data_start = header_end + _pad(header_end)
    if data_start + data_nbytes != body_end:
        raise CorruptFileError(
            f"{path}: size mismatch: header promises {data_nbytes} data bytes, "
            f"file holds {body_end - data_start}"
        )
    arrays: dict[str, np.ndarray] = {}
    try:
        for e in entries:
            dtype = np.dtype(e["dtype"])
            if dtype.kind not in _ALLOWED_KINDS:
                raise CorruptFileError(f"{path}: array {e['name']!r} has non-numeric dtype {dtype}")
            shape = tuple(int(s) for s in e["shape"])
            off, nbytes = int(e["offset"]), int(e["nbytes"])
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if off < 0 or nbytes != count * dtype.itemsize or off + nbytes > data_nbytes:
                raise CorruptFileError(f"{path}: array {e['name']!r} lies outside the data section")
            start = data_start + off
            arrays[e["name"]] = np.frombuffer(buf, dtype=dtype, count=count, offset=start).reshape(
                shape
            )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CorruptFileError):
            raise
        raise CorruptFileError(f"{path}: bad array table: {exc}") from exc
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{path}: meta is not a JSON object")
    return version, arrays, meta
