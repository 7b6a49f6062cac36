"""The .edge file: a compiled INT8 plan in one self-checking, memory-mappable file. numpy only.

Layout (little-endian):

    header   64 bytes   magic, format version, sizes, table-of-contents position and count, flags
             32 bytes   SHA-256 of every byte after the header
    toc      count x 136-byte records: name (48 bytes UTF-8, NUL-padded), dtype code, ndim, shape (8 x u64),
             offset, byte length
    blobs    each tensor's bytes at a 64-byte-aligned offset (SIMD loads straight from the mapped file)

A mostly-zero int8 tensor (a pruned layer's weights) is stored compressed when that is smaller (dtype code
``SPARSE_INT8``): a bitmask of its nonzero elements (one bit each, little-endian bit order) followed by the
nonzero values in order, ``sparse_int8_bytes(count, nonzeros)`` bytes in all. The reader checks the mask's
padding bits and that the values fill the record exactly, then expands it to a dense array.

One tensor is the plan itself: ``__plan__``, UTF-8 JSON. The reader trusts nothing: it checks the magic,
the version, every size against the real file, the checksum, and for each record its name, dtype, rank,
the 64-bit product of its shape, its byte length, alignment and bounds, before it makes any array, so a
truncated, corrupted or hostile file raises :class:`EdgeFormatError`, never reads out of bounds and
never allocates what the file merely claims.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any

import numpy as np

from lightning_edge.io import atomic_write_bytes

MAGIC = b"\x89EDGE\r\n\x1a"  # binary-only: text-mode transfers and truncation show in the first bytes
VERSION = (1, 1)  # 1.1: sparse int8 records
ALIGNMENT = 64
PLAN_NAME = "__plan__"
MAX_RANK = 8
MAX_TENSORS = 1 << 16
MAX_NAME_BYTES = 48
_HEADER = struct.Struct("<8sHHIQQQII16x")  # magic, major, minor, header bytes, file bytes, toc offset, toc end, count, flags
_DIGEST_BYTES = 32
HEADER_BYTES = _HEADER.size + _DIGEST_BYTES
_RECORD = struct.Struct(f"<{MAX_NAME_BYTES}sBB6x{MAX_RANK}QQQ")  # name, dtype, rank, shape, offset, nbytes
DTYPES = {1: np.dtype("<i1"), 2: np.dtype("u1"), 3: np.dtype("<i4"), 4: np.dtype("<f4"), 5: np.dtype("<i8")}
_CODES = {dtype: code for code, dtype in DTYPES.items()}
SPARSE_INT8 = 6


def sparse_int8_bytes(count: int, nonzeros: int) -> int:
    """Bytes of an int8 tensor of ``count`` elements, ``nonzeros`` of them nonzero, stored compressed."""
    return (count + 7) // 8 + nonzeros


def stored_bytes(array: np.ndarray) -> int:
    """Bytes ``write_edge`` stores for ``array``: compressed when it is int8 and that is smaller."""
    if array.dtype == np.int8:
        return min(array.nbytes, sparse_int8_bytes(array.size, int(np.count_nonzero(array))))
    return array.nbytes


class EdgeFormatError(ValueError):
    """A .edge file that cannot be trusted: says what is wrong, and that recompiling the ONNX file fixes it."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}. The file is damaged or not a .edge file; compile it again "
                         "(lightning-edge compile model.onnx -o model.edge)")


def _aligned(offset: int) -> int:
    return (offset + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def write_edge(path: str | os.PathLike, plan: dict[str, Any], tensors: dict[str, np.ndarray]) -> str:
    """Write ``plan`` (JSON-serialisable) and named ``tensors`` as a .edge file, atomically."""
    if PLAN_NAME in tensors:
        raise ValueError(f"{PLAN_NAME!r} is reserved for the plan")
    items = [(PLAN_NAME, np.frombuffer(json.dumps(plan, sort_keys=True).encode(), dtype=np.uint8))]
    items += [(name, np.ascontiguousarray(array)) for name, array in tensors.items()]
    if len(items) > MAX_TENSORS:
        raise ValueError(f"{len(items)} tensors; a .edge file holds at most {MAX_TENSORS}")
    toc_offset = HEADER_BYTES
    offset = _aligned(toc_offset + _RECORD.size * len(items))
    records, blobs = [], []
    for name, array in items:
        encoded = name.encode()
        if not encoded or len(encoded) > MAX_NAME_BYTES or b"\0" in encoded:
            raise ValueError(f"tensor name {name!r} must be 1 to {MAX_NAME_BYTES} UTF-8 bytes without NUL")
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if np.dtype(dtype) not in _CODES:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}; a .edge file holds int8, uint8, int32, int64, float32")
        if array.ndim > MAX_RANK:
            raise ValueError(f"tensor {name!r} has rank {array.ndim} > {MAX_RANK}")
        code = _CODES[np.dtype(dtype)]
        if code == _CODES[np.dtype("<i1")] and stored_bytes(array) < array.nbytes:
            flat = array.reshape(-1)
            mask = flat != 0
            data, code = np.packbits(mask, bitorder="little").tobytes() + flat[mask].tobytes(), SPARSE_INT8
        else:
            data = array.astype(dtype, copy=False).tobytes()
        shape = list(array.shape) + [0] * (MAX_RANK - array.ndim)
        records.append(_RECORD.pack(encoded, code, array.ndim, *shape, offset, len(data)))
        blobs.append((offset, data))
        offset = _aligned(offset + len(data))
    body = bytearray(offset - HEADER_BYTES)
    toc = b"".join(records)
    body[: len(toc)] = toc
    for blob_offset, data in blobs:
        body[blob_offset - HEADER_BYTES: blob_offset - HEADER_BYTES + len(data)] = data
    header = _HEADER.pack(MAGIC, *VERSION, HEADER_BYTES, offset, toc_offset, toc_offset + len(toc), len(items), 0)
    return atomic_write_bytes(path, header + hashlib.sha256(body).digest() + bytes(body))


def read_edge(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(plan, tensors) of a .edge file, every field checked first; tensors are read-only (views of the file, or
    expanded from sparse records)."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        data = handle.read()
    return parse_edge(data, path)


def parse_edge(data: bytes, path: str = "<bytes>") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``read_edge`` on bytes already in memory."""
    def fail(problem: str) -> EdgeFormatError:
        return EdgeFormatError(path, problem)

    if len(data) < HEADER_BYTES:
        raise fail(f"only {len(data)} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, major, minor, header_bytes, file_bytes, toc_offset, toc_end, count, flags = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise fail("no .edge signature at the start")
    if major != VERSION[0]:
        raise fail(f"format version {major}.{minor}; this runtime reads {VERSION[0]}.x")
    if header_bytes != HEADER_BYTES or flags != 0:
        raise fail(f"header size {header_bytes} / flags {flags} are not those of version {major}.{minor}")
    if file_bytes != len(data):
        raise fail(f"the header says {file_bytes} bytes, the file has {len(data)} (truncated or padded)")
    if hashlib.sha256(data[HEADER_BYTES:]).digest() != data[_HEADER.size:HEADER_BYTES]:
        raise fail("checksum mismatch: its bytes changed after it was written")
    if not 1 <= count <= MAX_TENSORS:
        raise fail(f"{count} tensors listed; expected 1 to {MAX_TENSORS}")
    if toc_offset != HEADER_BYTES or toc_end != toc_offset + count * _RECORD.size or toc_end > file_bytes:
        raise fail("the table of contents lies outside the file")
    tensors: dict[str, np.ndarray] = {}
    data_start = _aligned(toc_end)
    for index in range(count):
        name_bytes, code, rank, *rest = _RECORD.unpack_from(data, toc_offset + index * _RECORD.size)
        shape, offset, nbytes = rest[:MAX_RANK], rest[MAX_RANK], rest[MAX_RANK + 1]
        name = _decode_name(name_bytes, index, fail)
        if name in tensors:
            raise fail(f"tensor {name!r} is listed twice")
        if code not in DTYPES and code != SPARSE_INT8:
            raise fail(f"tensor {name!r} has unknown dtype code {code}")
        if rank > MAX_RANK or any(shape[rank:]):
            raise fail(f"tensor {name!r} has rank {rank} (at most {MAX_RANK}, unused dimensions zero)")
        dtype = DTYPES.get(code, np.dtype("<i1"))
        elements = 1
        most = file_bytes * 8 if code == SPARSE_INT8 else file_bytes // dtype.itemsize  # a mask bit per element
        for dimension in shape[:rank]:
            elements *= dimension
            if elements > most:
                raise fail(f"tensor {name!r} claims shape {tuple(shape[:rank])}, larger than the file")
        if code != SPARSE_INT8 and nbytes != elements * dtype.itemsize:
            raise fail(f"tensor {name!r}: {nbytes} bytes stored for shape {tuple(shape[:rank])} of {dtype}")
        if offset % ALIGNMENT or offset < data_start or offset + nbytes > file_bytes:
            raise fail(f"tensor {name!r} at bytes {offset}..{offset + nbytes} is misaligned or outside the data area")
        if code == SPARSE_INT8:
            flat = _expand_sparse(data, offset, nbytes, elements, name, fail)
        else:
            flat = np.frombuffer(data, dtype=dtype, count=elements, offset=offset)
        tensors[name] = flat.reshape(tuple(shape[:rank]))
    plan_bytes = tensors.pop(PLAN_NAME, None)
    if plan_bytes is None or plan_bytes.dtype != np.uint8 or plan_bytes.ndim != 1:
        raise fail(f"no {PLAN_NAME} record")
    try:
        plan = json.loads(plan_bytes.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise fail(f"the plan is not valid JSON ({error})") from None
    if not isinstance(plan, dict):
        raise fail("the plan is not a JSON object")
    return plan, tensors


def _expand_sparse(data: bytes, offset: int, nbytes: int, elements: int, name: str, fail: Any) -> np.ndarray:
    """The dense int8 array of a compressed record, its mask and values checked against its length first."""
    mask_bytes = (elements + 7) // 8
    if nbytes < mask_bytes:
        raise fail(f"sparse tensor {name!r}: {nbytes} bytes cannot hold the {mask_bytes}-byte mask of {elements} elements")
    mask = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=mask_bytes, offset=offset), bitorder="little")
    if mask[elements:].any():
        raise fail(f"sparse tensor {name!r} sets mask bits past its {elements} elements")
    mask = mask[:elements].astype(bool)
    nonzeros = int(mask.sum())
    if nbytes != sparse_int8_bytes(elements, nonzeros):
        raise fail(f"sparse tensor {name!r}: {nbytes} bytes stored, its mask says {sparse_int8_bytes(elements, nonzeros)}")
    dense = np.zeros(elements, dtype=np.int8)
    dense[mask] = np.frombuffer(data, dtype=np.int8, count=nonzeros, offset=offset + mask_bytes)
    dense.flags.writeable = False
    return dense


def _decode_name(raw: bytes, index: int, fail: Any) -> str:
    encoded = raw.rstrip(b"\0")
    if not encoded or b"\0" in encoded:
        raise fail(f"record {index} has an empty or malformed name")
    try:
        return encoded.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(f"record {index} has a name that is not UTF-8") from None
