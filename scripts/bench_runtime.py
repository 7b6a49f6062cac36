"""lightning-edge's INT8 runtime against ONNX Runtime on the same QDQ file, plus FP32 baselines.

    .venv/bin/python scripts/bench_runtime.py                 # all models, batch 1 and 32, 2 threads
    .venv/bin/python scripts/bench_runtime.py --models resnet20 --batches 1

For each model (CIFAR-shaped 3x32x32 input, random weights with BatchNorm statistics from random batches,
as BENCHMARKS.md's anchors): two QDQ files, ours (`to_onnx` after PTQ calibration on random batches) and
ONNX Runtime's (`quantize_static`, per-channel int8 weights, uint8 activations, from the FP32 ONNX file);
each is compiled by `lightning_edge.runtime.compile` with kernels timed at the batch being measured. Then,
per batch size, alternating in blocks (lightning_edge.runtime.benchmark.alternating) on one input and the
same thread count: our runtime and ONNX Runtime on the same QDQ file, ONNX Runtime FP32 on the float file,
and PyTorch FP32 eager. Reported: medians, our speed-up over ONNX Runtime INT8 (the issue's target), and
the fraction of the CPU's INT8 peak each INT8 engine reaches: 2 x MACs / time over the peak measured at
the start on the same threads (register-only chains of the widest int8 multiply-add: vpdpbusd with AVX-512
VNNI, else AVX2's vpmaddubsw sequence; lightning_edge.runtime's int8_peak_ops). Writes OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {  # name: (create_model name, kwargs)
    "resnet20": ("cifar_resnet20", {}),
    "resnet56": ("cifar_resnet56", {}),
    "resnet20x4": ("cifar_resnet20", {"base_width": 64}),
    "resnet20x4_g4": ("cifar_resnet20", {"base_width": 64, "derive": {"block": "G4"}}),
    "mobilenetv2": ("mobilenetv2_100", {}),
}
TARGETS = {"resnet20x4_g4": 1.3}  # every other model: 1.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--sources", nargs="+", default=["ours", "ort"], choices=["ours", "ort"],
                        help="whose QDQ file: our to_onnx export or ONNX Runtime's quantize_static")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per measurement")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", default="outputs/bench/runtime")
    return parser.parse_args()


def build_files(name: str, shape: tuple[int, int, int], folder: Path) -> dict:
    """The float model, its FP32 ONNX file and the two QDQ files; returns paths, MACs and the torch model."""
    import torch

    from lightning_edge.export import to_onnx
    from lightning_edge.models import create_model, profile_model
    from lightning_edge.quant import calibrate
    from lightning_edge.runtime.benchmark import quantize_static_qdq

    model_name, kwargs = MODELS[name]
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_chans=shape[0], image_size=shape[1], **kwargs)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, *shape))
    model.eval()
    macs = profile_model(model, shape).macs
    example = torch.zeros(1, *shape)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": to_onnx(model, example, str(folder / "fp32.onnx"))}
    calibration = [torch.randn(8, *shape) for _ in range(4)]
    import copy

    paths["ours"] = to_onnx(calibrate(copy.deepcopy(model), calibration, num_batches=4), example, str(folder / "ours.onnx"))

    quantize_static_qdq(paths["fp32"], str(folder / "ort.onnx"), [batch.numpy() for batch in calibration])
    paths["ort"] = str(folder / "ort.onnx")
    return {"paths": paths, "macs": macs, "model": model}


def measure(name: str, built: dict, source: str, batch: int, args: argparse.Namespace, folder: Path) -> dict:
    import torch

    from lightning_edge.runtime import compile, load
    from lightning_edge.runtime.benchmark import alternating, onnxruntime_session

    qdq = built["paths"][source]
    edge = str(folder / f"{source}_b{batch}.edge")
    plan = compile(qdq, edge, tune_batch=batch, threads=args.threads)
    session = load(edge, threads=args.threads)
    ort_int8 = onnxruntime_session(qdq, args.threads)
    ort_fp32 = onnxruntime_session(built["paths"]["fp32"], args.threads)
    torch.set_num_threads(args.threads)
    shape = session.input_shape
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    xt = torch.from_numpy(x)
    model = built["model"]

    def torch_fp32():
        with torch.no_grad():
            model(xt)

    candidates = {
        "lightning-edge int8": lambda: session.run(x),
        "onnxruntime int8": lambda: ort_int8.run(None, {"input": x}),
        "onnxruntime fp32": lambda: ort_fp32.run(None, {"input": x}),
        "pytorch fp32": torch_fp32,
    }
    calls = 10 if batch == 1 else 5
    times = alternating(candidates, rounds=args.rounds, calls=calls, discard=2)
    medians = {key: float(np.median(value)) * 1e3 for key, value in times.items()}
    ops = 2.0 * built["macs"] * batch
    peak = args.peak
    return {
        "model": name, "source": source, "batch": batch, "threads": args.threads, "mmacs": built["macs"] / 1e6,
        "ms": medians,
        "speedup_vs_ort_int8": medians["onnxruntime int8"] / medians["lightning-edge int8"],
        "target": TARGETS.get(name, 1.0),
        "peak_fraction": {key: ops / (medians[key] / 1e3) / peak for key in ("lightning-edge int8", "onnxruntime int8")}
        if peak else None,
        "kernels": session.kernels,
        "primitives": sorted({op.primitive for op in plan.ops if getattr(op, "primitive", None)}),
    }


def table(results: list[dict], machine: dict, peak: float) -> str:
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, kernels {', '.join(machine['kernels'])}; "
        f"{results[0]['threads'] if results else '?'} threads; measured int8 peak {peak / 1e9:.0f} GOP/s; "
        "medians of alternating blocks.",
        "",
        "| model (MMACs) | QDQ from | batch | ours int8 ms | ORT int8 ms | ORT fp32 ms | torch fp32 ms | "
        "speed-up vs ORT int8 (target) | % of int8 peak: ours / ORT |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ms = r["ms"]
        peak = (f"{100 * r['peak_fraction']['lightning-edge int8']:.0f}% / {100 * r['peak_fraction']['onnxruntime int8']:.0f}%"
                if r["peak_fraction"] else "n/a")
        verdict = "" if r["speedup_vs_ort_int8"] >= r["target"] else " **miss**"
        lines.append(
            f"| {r['model']} ({r['mmacs']:.0f}) | {r['source']} | {r['batch']} | {ms['lightning-edge int8']:.3f} | "
            f"{ms['onnxruntime int8']:.3f} | {ms['onnxruntime fp32']:.3f} | {ms['pytorch fp32']:.3f} | "
            f"{r['speedup_vs_ort_int8']:.2f}x ({r['target']:.1f}x){verdict} | {peak} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    from lightning_edge.runtime.benchmark import machine
    from lightning_edge.runtime.native import engine_module

    args.peak = engine_module().int8_peak_ops(args.threads, 0.3) or None

    out = Path(args.out)
    shape = (3, args.image_size, args.image_size)
    results = []
    started = time.perf_counter()
    for name in args.models:
        folder = out / name
        built = build_files(name, shape, folder)
        for source in args.sources:
            for batch in args.batches:
                result = measure(name, built, source, batch, args, folder)
                results.append(result)
                print(f"{name:14s} {source:4s} b{batch:<3d} ours {result['ms']['lightning-edge int8']:8.3f} ms  "
                      f"ORT int8 {result['ms']['onnxruntime int8']:8.3f} ms  x{result['speedup_vs_ort_int8']:.2f}", flush=True)
    info = machine()
    command = "python scripts/bench_runtime.py " + " ".join(sys.argv[1:])
    payload = {"command": command.strip(), "machine": info, "int8_peak_ops": args.peak, "results": results,
               "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    markdown = f"`{payload['command']}` ({payload['seconds']:.0f} s)\n\n" + table(results, info, args.peak or 0.0) + "\n"
    (out / "results.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
