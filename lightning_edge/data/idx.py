"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip), validated before use."""
from __future__ import annotations

import gzip
import os

import numpy as np

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file into an array of its declared type and shape.

    Raises:
        ValueError: the header is not IDX, or the payload is shorter or longer than the header declares.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read IDX file {path!r}: {error}; delete it and fetch it again") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path!r} is not an IDX file (bad magic number); delete it and fetch it again")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"IDX file {path!r} has a truncated header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"IDX file {path!r} declares shape {shape} ({expected} bytes) but holds {len(data) - header} bytes; "
            "it is truncated or corrupt: delete it and fetch it again"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
