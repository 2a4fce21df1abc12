"""Tests of llmds.retrieval._binfmt: round trips, corruption detection, atomic replacement."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from llmds.retrieval._binfmt import DIGEST_SIZE, read_checked, write_atomic
from llmds.errors import CorruptFileError, ValidationError

MAGIC = b"TESTFMT1"


def _sample_arrays() -> dict[str, np.ndarray]:
    return {
        "ints": np.arange(10, dtype=np.int64),
        "empty": np.zeros(0, np.float32),
        "scalar": np.array(3.5),
        "matrix": np.arange(12, dtype=np.int16).reshape(3, 4),
        "transposed": np.arange(12, dtype=np.int32).reshape(3, 4).T,  # not C-contiguous
        "bigendian": np.arange(5, dtype=">i4"),
        "flags": np.array([True, False, True]),
        "bytes": np.frombuffer(b"hello", np.uint8),
    }


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name, arr in a.items():
        assert b[name].shape == arr.shape, name
        assert b[name].dtype in (arr.dtype, arr.dtype.newbyteorder("<")), name
        np.testing.assert_array_equal(b[name], arr)


def test_round_trip_shapes_dtypes_and_meta(tmp_path):
    path = tmp_path / "x.bin"
    arrays = _sample_arrays()
    meta = {"k1": 1.5, "name": "café ✓", "nested": {"list": [1, 2, None]}}
    write_atomic(path, MAGIC, 3, arrays, meta)
    version, got, got_meta = read_checked(path, MAGIC, [1, 3])
    assert version == 3
    assert got_meta == meta
    _assert_same(arrays, got)
    assert got["bigendian"].dtype == np.dtype("<i4")
    assert all(a.flags.writeable for a in got.values())
    assert os.listdir(tmp_path) == ["x.bin"]  # no temporary file left behind


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        hnp.arrays(
            dtype=st.sampled_from([np.int8, np.int32, np.uint64, np.float32, np.float64, np.bool_]),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        ),
        max_size=4,
    ),
    st.dictionaries(st.text(max_size=5), st.integers(-(2**40), 2**40), max_size=3),
)
def test_round_trip_property(tmp_path_factory, arrays, meta):
    path = tmp_path_factory.mktemp("rt") / "f.bin"
    write_atomic(path, MAGIC, 1, arrays, meta)
    _, got, got_meta = read_checked(path, MAGIC, (1,))
    assert got_meta == meta
    assert list(got) == list(arrays)
    for name, arr in arrays.items():
        assert got[name].shape == arr.shape and got[name].dtype == arr.dtype
        np.testing.assert_array_equal(got[name], arr)


def _small_file(tmp_path) -> tuple[str, bytes]:
    path = str(tmp_path / "small.bin")
    write_atomic(path, MAGIC, 1, {"a": np.arange(7, dtype=np.int32), "b": np.ones(3)}, {"x": 1})
    with open(path, "rb") as f:
        return path, f.read()


def test_every_single_byte_flip_is_rejected(tmp_path):
    path, good = _small_file(tmp_path)
    for pos in range(len(good)):
        bad = bytearray(good)
        bad[pos] ^= 0x01
        with open(path, "wb") as f:
            f.write(bad)
        with pytest.raises(CorruptFileError):
            read_checked(path, MAGIC, (1,))


def test_every_truncation_is_rejected(tmp_path):
    path, good = _small_file(tmp_path)
    for n in range(len(good)):
        with open(path, "wb") as f:
            f.write(good[:n])
        with pytest.raises(CorruptFileError):
            read_checked(path, MAGIC, (1,))


def test_trailing_bytes_are_rejected(tmp_path):
    path, good = _small_file(tmp_path)
    with open(path, "wb") as f:
        f.write(good + b"\0")
    with pytest.raises(CorruptFileError):
        read_checked(path, MAGIC, (1,))


def test_wrong_magic_and_unknown_version(tmp_path):
    path, _ = _small_file(tmp_path)
    with pytest.raises(CorruptFileError, match="magic"):
        read_checked(path, b"OTHERFMT", (1,))
    write_atomic(path, MAGIC, 2, {"a": np.zeros(2)}, {})
    with pytest.raises(CorruptFileError, match="version 2"):
        read_checked(path, MAGIC, (1,))
    assert read_checked(path, MAGIC, (1, 2))[0] == 2


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checked(tmp_path / "nope.bin", MAGIC, (1,))


def test_inconsistent_header_with_valid_checksum_is_rejected(tmp_path):
    """A file whose checksum is right but whose array table lies must still fail."""
    import hashlib
    import struct

    path = tmp_path / "forged.bin"
    header = json.dumps(
        {
            "meta": {},
            "data_nbytes": 64,
            "arrays": [{"name": "a", "dtype": "<i8", "shape": [100], "offset": 0, "nbytes": 800}],
        }
    ).encode()
    head = MAGIC + struct.pack("<IQ", 1, len(header)) + header
    body = head + b"\0" * ((-len(head)) % 64) + b"\0" * 64
    with open(path, "wb") as f:
        f.write(body + hashlib.blake2b(body, digest_size=DIGEST_SIZE).digest())
    with pytest.raises(CorruptFileError, match="outside"):
        read_checked(path, MAGIC, (1,))


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path, good = _small_file(tmp_path)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, MAGIC, 1, {"a": np.arange(1000)}, {})
    monkeypatch.undo()
    with open(path, "rb") as f:
        assert f.read() == good
    assert os.listdir(tmp_path) == ["small.bin"]


def test_bad_arguments_write_nothing(tmp_path):
    path = tmp_path / "bad.bin"
    with pytest.raises(ValidationError):
        write_atomic(path, MAGIC, 1, {"o": np.array([object()], dtype=object)}, {})
    with pytest.raises(ValidationError):
        write_atomic(path, MAGIC, 1, {"s": np.array(["text"])}, {})
    with pytest.raises(ValidationError):
        write_atomic(path, MAGIC, 1, {}, {"x": float("nan")})
    with pytest.raises(ValidationError):
        write_atomic(path, MAGIC, 1, {}, {"x": object()})
    with pytest.raises(ValidationError):
        write_atomic(path, b"", 1, {}, {})
    with pytest.raises(ValidationError):
        write_atomic(path, MAGIC, -1, {}, {})
    with pytest.raises(ValidationError):
        write_atomic(path, MAGIC, True, {}, {})
    assert os.listdir(tmp_path) == []
