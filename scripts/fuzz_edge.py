"""Mutation-fuzz the .edge loader: every mutated file must load or raise EdgeFormatError, nothing else.

    .venv/bin/python scripts/fuzz_edge.py --files 100000

Mutations: 1 to 8 random bytes overwritten, sometimes truncated; half the files get their checksum
repaired, so the checks behind it (sizes, records, shapes, offsets, the JSON plan) are what must hold.
Prints the counts and exits 1 on any other exception. The loader is Python and numpy only; once the
compiled kernels read these files too, the same loop is to run under AddressSanitizer.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_edge.runtime.edge_format import HEADER_BYTES, EdgeFormatError, parse_edge, write_edge  # noqa: E402


def seed_file() -> bytes:
    rng = np.random.default_rng(0)
    tensors = {
        "conv.weight": rng.integers(-127, 128, (16, 8, 3, 3)).astype(np.int8),
        "conv.bias": rng.integers(-(2**20), 2**20, 16).astype(np.int32),
        "conv.multiplier": rng.random(16).astype(np.float32),
        "fc.weight": rng.integers(-127, 128, (10, 16)).astype(np.int8),
    }
    plan = {"ops": [{"op": "conv", "input": "x", "output": "y", "weight": "conv.weight"}], "inputs": [[1, 8, 28, 28]]}
    with tempfile.TemporaryDirectory() as folder:
        return Path(write_edge(Path(folder) / "seed.edge", plan, tensors)).read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    original, rng = seed_file(), np.random.default_rng(args.seed)
    counts = {"loaded": 0, "refused": 0, "other": 0}
    started = time.perf_counter()
    for trial in range(args.files):
        data = bytearray(original)
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            del data[int(rng.integers(0, len(data))):]
        if trial % 2 and len(data) >= HEADER_BYTES:
            data[HEADER_BYTES - 32: HEADER_BYTES] = hashlib.sha256(bytes(data[HEADER_BYTES:])).digest()
        try:
            parse_edge(bytes(data))
            counts["loaded"] += 1
        except EdgeFormatError:
            counts["refused"] += 1
        except Exception:  # noqa: BLE001 - exactly what the fuzzer hunts
            counts["other"] += 1
            print(f"file {trial}: {traceback.format_exc()}", file=sys.stderr)
    print(f"{args.files} mutated files in {time.perf_counter() - started:.1f} s: {counts}")
    return 1 if counts["other"] else 0


if __name__ == "__main__":
    sys.exit(main())
