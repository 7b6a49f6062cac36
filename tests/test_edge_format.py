"""The .edge container: round trip, and a loader that refuses damaged or hostile files with a clear error."""
from __future__ import annotations

import hashlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from lightning_edge.runtime.edge_format import (
    ALIGNMENT,
    HEADER_BYTES,
    SPARSE_INT8,
    EdgeFormatError,
    parse_edge,
    read_edge,
    sparse_int8_bytes,
    stored_bytes,
    write_edge,
)

RECORD_BYTES = 136
PRUNED = np.where(np.arange(101) % 5 == 0, np.arange(101) - 50, 0).astype(np.int8).reshape(1, 101)


def sample(tmp_path) -> bytes:
    tensors = {
        "conv1.weight": np.arange(-60, 60, dtype=np.int8).reshape(4, 3, 10),
        "conv1.bias": np.array([1, -2, 3, 2**30], dtype=np.int32),
        "conv1.multiplier": np.linspace(0.001, 0.002, 4, dtype=np.float32),
        "pruned.weight": PRUNED,  # 80% zeros: stored compressed
        "empty": np.zeros((0, 3), dtype=np.uint8),
    }
    path = write_edge(tmp_path / "model.edge", {"ops": [{"op": "conv", "name": "conv1"}], "version": 1}, tensors)
    return open(path, "rb").read()


def with_checksum(data: bytearray) -> bytes:
    """A hostile file: whatever was changed, the checksum is made to match again."""
    data[HEADER_BYTES - 32: HEADER_BYTES] = hashlib.sha256(bytes(data[HEADER_BYTES:])).digest()
    return bytes(data)


def test_round_trip_keeps_plan_values_and_alignment(tmp_path):
    data = sample(tmp_path)
    plan, tensors = read_edge(tmp_path / "model.edge")
    assert plan == {"ops": [{"op": "conv", "name": "conv1"}], "version": 1}
    assert tensors["conv1.weight"].dtype == np.int8 and tensors["conv1.weight"][3, 2, 9] == 59
    assert tensors["conv1.bias"].tolist() == [1, -2, 3, 2**30]
    assert tensors["empty"].shape == (0, 3)
    assert all(not array.flags.writeable for array in tensors.values())  # views of the file's bytes
    assert np.array_equal(tensors["pruned.weight"], PRUNED)
    offsets = [struct.unpack_from("<Q", data, record_field(index, "offset"))[0] for index in range(6)]
    assert all(offset % ALIGNMENT == 0 for offset in offsets) and len(set(offsets)) == 6


def test_sparse_int8_tensors_are_stored_compressed_and_dense_ones_are_not(tmp_path):
    data = sample(tmp_path)
    dtype_code, nbytes = data[record_field(4, "dtype")], struct.unpack_from("<Q", data, record_field(4, "nbytes"))[0]
    assert dtype_code == SPARSE_INT8 and nbytes == sparse_int8_bytes(101, 20) == 13 + 20 < PRUNED.nbytes
    assert stored_bytes(PRUNED) == nbytes
    assert data[record_field(1, "dtype")] == 1  # conv1.weight has one zero in 120: dense is smaller


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (lambda data, mask_at: data.__setitem__(mask_at + 12, data[mask_at + 12] | 0x80), "mask bits past"),
        (lambda data, mask_at: data.__setitem__(mask_at, data[mask_at] ^ 0x02), "its mask says"),
    ],
)
def test_hostile_sparse_records_are_refused(tmp_path, corrupt, message):
    data = bytearray(sample(tmp_path))
    mask_at = struct.unpack_from("<Q", data, record_field(4, "offset"))[0]
    corrupt(data, mask_at)
    with pytest.raises(EdgeFormatError, match=message):
        parse_edge(with_checksum(data))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: d[:100], "header says"),
        (lambda d: d[:50], "shorter than"),
        (lambda d: b"PK\x03\x04" + d[4:], "no .edge signature"),
        (lambda d: d[:8] + struct.pack("<H", 9) + d[10:], "format version 9"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum mismatch"),
        (lambda d: d + b"\0" * 64, "header says"),
    ],
    ids=["truncated", "tiny", "zip", "future-version", "flipped-bit", "padded"],
)
def test_damaged_files_are_refused(tmp_path, damage, message):
    data = damage(sample(tmp_path))
    with pytest.raises(EdgeFormatError, match=message) as error:
        parse_edge(data, "model.edge")
    assert "compile it again" in str(error.value)


def record_field(index: int, field: str) -> int:
    """Byte position of a field of TOC record ``index``."""
    base = HEADER_BYTES + index * RECORD_BYTES
    return {"dtype": base + 48, "rank": base + 49, "shape0": base + 56, "offset": base + 120, "nbytes": base + 128}[field]


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("offset", 2**63, "outside the data area"),
        ("offset", 64 * 3 + 1, "misaligned"),
        ("nbytes", 10**6, "bytes stored for shape"),
        ("shape0", 2**62, "larger than the file"),
        ("dtype", 77, "unknown dtype code 77"),
        ("rank", 9, "rank 9"),
    ],
)
def test_hostile_records_with_a_valid_checksum_are_refused(tmp_path, field, value, message):
    data = bytearray(sample(tmp_path))
    position = record_field(1, field)
    size = 1 if field in ("dtype", "rank") else 8
    data[position: position + size] = value.to_bytes(size, "little")
    with pytest.raises(EdgeFormatError, match=message):
        parse_edge(with_checksum(data))


def test_mutation_fuzz_never_escapes_as_anything_but_edge_format_error(tmp_path):
    """3,000 mutated files (half with a repaired checksum, so the deeper checks run): each one loads or
    raises EdgeFormatError; nothing else. The 100,000-file run is scripts/fuzz_edge.py."""
    original = sample(tmp_path)
    rng = np.random.default_rng(0)
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(3000):
        data = bytearray(original)
        for _ in range(int(rng.integers(1, 8))):
            position = int(rng.integers(0, len(data)))
            data[position] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            data = data[: int(rng.integers(0, len(data)))]
        candidate = with_checksum(data) if trial % 2 and len(data) >= HEADER_BYTES else bytes(data)
        try:
            parse_edge(candidate)
            outcomes["loaded"] += 1
        except EdgeFormatError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 1000 and sum(outcomes.values()) == 3000


def test_the_format_and_the_reference_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "import lightning_edge.runtime, lightning_edge.runtime.edge_format, lightning_edge.runtime.reference; "
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
