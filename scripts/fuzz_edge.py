"""Mutation-fuzz the .edge loader and the engine behind it: every mutated file must load and run, or raise
EdgeFormatError, nothing else (no other exception, no crash, no hang).

    .venv/bin/python scripts/fuzz_edge.py --files 100000
    .venv/bin/python scripts/fuzz_edge.py --fp32 --files 100000   # the FP32 file of the same network
    .venv/bin/python scripts/fuzz_edge.py --bf16 --files 100000   # that FP32 file compiled with precision="bf16"
    .venv/bin/python scripts/fuzz_edge.py --fp16 --files 100000   # and with precision="fp16"
    # under AddressSanitizer (docs/runtime.md builds the instrumented extension; no torch in that process):
    .venv/bin/python scripts/fuzz_edge.py --write-seed /tmp/seed.edge
    LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
        .venv/bin/python scripts/fuzz_edge.py --seed-edge /tmp/seed.edge --files 100000

The seed is a real compiled plan: a small calibrated network with a strided conv, a grouped conv (80% of
its weights pruned, so the file stores them as a sparse record), a residual add folded into a conv, global
pooling and a linear layer. Three kinds of mutation, in turn:
  bytes: 1 to 8 random bytes overwritten, sometimes truncated; half get their checksum repaired, so the
         checks behind it (sizes, records, shapes, offsets, the JSON plan) are what must hold;
  plan:  one field of one op or tensor record set to a hostile value (negative, zero, huge, off by one, the
         wrong type, another array's name) or deleted, written as a valid file (checksum and all), so the
         engine's own checks are what must hold;
  array: one weight, bias or multiplier array truncated, widened to another dtype or reshaped.
Every file that loads is run on a batch of 4 (two batch groups) on every kernel path of this CPU. Exits 1 on any other
exception; a crash or sanitizer report ends the process.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_edge.runtime import EdgeFormatError, Session, available_kernels  # noqa: E402
from lightning_edge.runtime.edge_format import HEADER_BYTES, parse_edge, read_edge, write_edge  # noqa: E402

HOSTILE = [-1, 0, 1, 3, 7, 2**31 - 1, 2**31, 2**40, -(2**40), 1.5, "x", None, [1], {"a": 1}]


def seed_file(folder: Path, fp32: bool = False, precision: str = "fp32") -> Path:
    """A small network with every op kind the engine has (a float region included), quantized by ONNX Runtime's
    quantize_static and compiled; with ``fp32``, its FP32 file compiled as it is in ``precision`` (the float32
    ops, or bf16_conv / fp16_conv for its convs)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from lightning_edge.runtime import compile
    from lightning_edge.runtime.benchmark import quantize_static_qdq

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.grouped = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8))
            self.depthwise, self.branch = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1)
            self.reduce, self.expand = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
            self.norm = nn.LayerNorm(16)
            self.position = nn.Parameter(torch.randn(1, 9, 16))
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.stem(x)                                                  # 8 x 6 x 6
            x = F.relu(self.grouped(x) + x)                                   # conv with a folded add
            y = F.silu(self.depthwise(x))                                     # a table (sigmoid composed in)
            x = F.hardswish(F.relu(y + self.branch(x)) + y)                   # a folded add, an add, a table
            x = x * torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))  # binary
            x = torch.cat([x, F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)], dim=1)       # concat
            n, c, h, w = x.shape
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # gather
            x = F.max_pool2d(x, 2, ceil_mode=True)                            # 16 x 3 x 3
            tokens = self.norm(x.flatten(2).transpose(1, 2) + self.position)   # float region
            tokens = torch.softmax(tokens @ tokens.transpose(1, 2), dim=-1) @ tokens
            return self.fc(tokens.amax(1))

    torch.manual_seed(0)
    model = Small().eval()
    with torch.no_grad():  # a magnitude-pruned layer: its int8 weights are stored as a sparse record
        weight = model.grouped[0].weight
        weight[weight.abs() < weight.abs().flatten().quantile(0.8)] = 0
    float_path = str(folder / "seed_float.onnx")
    torch.onnx.export(model, torch.zeros(1, 1, 12, 12), float_path, input_names=["input"], output_names=["output"],
                      opset_version=17, dynamo=False, dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    if fp32:
        compile(float_path, folder / "seed.edge", select=False, precision=precision)
        return folder / "seed.edge"
    rng = np.random.default_rng(0)
    onnx_path = quantize_static_qdq(float_path, str(folder / "seed.onnx"),
                                    [rng.standard_normal((4, 1, 12, 12)).astype(np.float32) for _ in range(2)])
    compile(onnx_path, folder / "seed.edge", select=False)
    return folder / "seed.edge"


def mutate_bytes(original: bytes, rng: np.random.Generator, repair: bool) -> bytes:
    data = bytearray(original)
    for _ in range(int(rng.integers(1, 9))):
        data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
    if rng.random() < 0.2:
        del data[int(rng.integers(0, len(data))):]
    if repair and len(data) >= HEADER_BYTES:
        data[HEADER_BYTES - 32: HEADER_BYTES] = hashlib.sha256(bytes(data[HEADER_BYTES:])).digest()
    return bytes(data)


def mutate_plan(plan: dict, tensors: dict, rng: np.random.Generator) -> tuple[dict, dict]:
    plan, tensors = copy.deepcopy(plan), dict(tensors)
    kind = rng.integers(0, 3)
    if kind == 0:  # one op field
        op = plan["ops"][int(rng.integers(0, len(plan["ops"])))]
        key = list(op)[int(rng.integers(0, len(op)))]
        if isinstance(op[key], dict):  # a grid
            grid_key = list(op[key])[int(rng.integers(0, len(op[key])))]
            op[key][grid_key] = HOSTILE[int(rng.integers(0, len(HOSTILE)))]
        elif rng.random() < 0.15:
            del op[key]
        elif rng.random() < 0.3 and isinstance(op[key], int):
            op[key] += int(rng.choice([-1, 1]))
        elif rng.random() < 0.2:
            op[key] = list(tensors)[int(rng.integers(0, len(tensors)))]
        else:
            op[key] = HOSTILE[int(rng.integers(0, len(HOSTILE)))]
    elif kind == 1:  # one tensor record, or the op order
        if rng.random() < 0.5:
            record = plan["tensors"][int(rng.integers(0, len(plan["tensors"])))]
            record["size"] = HOSTILE[int(rng.integers(0, len(HOSTILE)))]
        else:
            i, j = rng.integers(0, len(plan["ops"]), 2)
            plan["ops"][i], plan["ops"][j] = plan["ops"][j], plan["ops"][i]
    else:  # one array
        name = list(tensors)[int(rng.integers(0, len(tensors)))]
        value = tensors[name]
        choice = rng.integers(0, 3)
        tensors[name] = (value.reshape(-1)[: max(0, value.size - int(rng.integers(1, 5)))].copy() if choice == 0
                         else value.astype(rng.choice([np.int8, np.int32, np.float32])) if choice == 1
                         else value.reshape(-1, 1).copy() if value.size else value)
    return plan, tensors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seed-edge", help="a compiled .edge file to mutate (default: compile the small network here, "
                                            "which imports torch; under a sanitizer pass a file made beforehand)")
    parser.add_argument("--write-seed", help="only compile the small network's .edge file to this path, then exit")
    parser.add_argument("--fp32", action="store_true", help="compile the small network's FP32 file instead of its QDQ "
                                                            "file (fuzzes the float32 ops)")
    parser.add_argument("--bf16", action="store_true", help="compile the FP32 file with precision='bf16' (fuzzes bf16_conv)")
    parser.add_argument("--fp16", action="store_true", help="compile the FP32 file with precision='fp16' (fuzzes fp16_conv)")
    args = parser.parse_args()
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    seed_options = {"fp32": args.fp32 or precision != "fp32", "precision": precision}
    if args.write_seed:
        import shutil

        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(seed_file(Path(folder), **seed_options), args.write_seed)
        return 0
    rng = np.random.default_rng(args.seed)
    kernels = available_kernels()
    counts = {"loaded and ran": 0, "refused": 0, "other": 0}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        seed = Path(args.seed_edge) if args.seed_edge else seed_file(Path(folder), **seed_options)
        original = seed.read_bytes()
        plan, tensors = read_edge(seed)
        # Any seed's input (an FP32 file's too); a batch of 4 runs as two batch groups of 2 on 2 threads.
        x = rng.standard_normal((4, *plan["input"]["shape"])).astype(np.float32)
        mutated_path = Path(folder) / "mutated.edge"
        for trial in range(args.files):
            try:
                if trial % 3 == 0:
                    loaded_plan, loaded = parse_edge(mutate_bytes(original, rng, repair=bool(trial % 2)))
                else:
                    hostile_plan, hostile = mutate_plan(plan, tensors, rng) if trial % 3 == 1 else mutate_plan(plan, tensors, rng)
                    write_edge(mutated_path, hostile_plan, hostile)
                    loaded_plan, loaded = read_edge(mutated_path)
                for path in kernels:
                    session = Session(loaded_plan, loaded, threads=2, kernels=path, path="mutated.edge")
                    session.run(x)
                counts["loaded and ran"] += 1
            except EdgeFormatError:
                counts["refused"] += 1
            except (TypeError, ValueError) as error:
                if "JSON" in str(error) or "serializable" in str(error):  # write_edge refusing an unwritable plan
                    counts["refused"] += 1
                else:
                    counts["other"] += 1
                    print(f"file {trial}: {traceback.format_exc()}", file=sys.stderr)
            except Exception:  # noqa: BLE001 - exactly what the fuzzer hunts
                counts["other"] += 1
                print(f"file {trial}: {traceback.format_exc()}", file=sys.stderr)
            if trial and trial % 10_000 == 0:
                print(f"{trial} files, {time.perf_counter() - started:.0f} s: {counts}", flush=True)
    print(f"{args.files} mutated files in {time.perf_counter() - started:.1f} s, kernels {kernels}: {counts}")
    return 1 if counts["other"] else 0


if __name__ == "__main__":
    sys.exit(main())
