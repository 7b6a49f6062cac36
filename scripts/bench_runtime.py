"""lightning-edge's INT8 runtime against ONNX Runtime and OpenVINO on the same QDQ file, plus FP32 baselines.

    .venv/bin/python scripts/bench_runtime.py                      # every model at its size, batches 1 and 32 / 1 and 8
    .venv/bin/python scripts/bench_runtime.py --models resnet20 --batches 1
    .venv/bin/python scripts/bench_runtime.py --models mobilenetv2 efficientnet_lite0 --sources ort

Each model runs at its own input size (``MODELS``): the CIFAR-shaped ResNets at 3x32x32, batches 1 and 32;
the ImageNet edge networks (timm) at 3x224x224, batches 1 and 8 (``--image-size`` and ``--batches``
override). Random weights with BatchNorm statistics from random batches, as BENCHMARKS.md's anchors; two QDQ
files, ours (`to_onnx` after PTQ calibration on random batches) and ONNX Runtime's (`quantize_static`,
per-channel int8 weights, uint8 activations, from the FP32 ONNX file); each is compiled by
`lightning_edge.runtime.compile` with kernels timed at the batch being measured. Then, per batch size,
alternating in blocks with idle gaps (lightning_edge.runtime.benchmark.alternating), on one input and the same
thread count: our runtime, ONNX Runtime and OpenVINO (one stream, latency hint; the precisions its runtime
model gives the convs are recorded, so an OpenVINO that fell back to float shows) on the same QDQ file, ONNX
Runtime FP32 on the float file, PyTorch FP32 eager, and our runtime on the float file in bfloat16
(``compile(..., precision="bf16")``, timed only where the CPU has AVX512_BF16: elsewhere it runs the
exact float32 emulation, which is not a speed path), so int8, bf16 and fp32 share a row. Our own float32 path (exact float
convs, the spec's oracle) is left out: it is tens of times slower than either FP32 peer.

Reported: medians; our speed-up over the faster INT8 peer (the issue's target: at least 1.0x) and over each;
the fraction of the CPU's INT8 peak each INT8 engine reaches: 2 x MACs / time over the peak measured at the
start on the same threads (register-only chains of the widest int8 multiply-add: vpdpbusd with AVX-512 VNNI,
else AVX2's vpmaddubsw sequence). The kernel path and CPU flags head the table. Writes OUT/results.json and
OUT/results.md.
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

MODELS = {  # name: (create_model name, kwargs, input height and width)
    "resnet20": ("cifar_resnet20", {}, 32),
    "resnet56": ("cifar_resnet56", {}, 32),
    "resnet20x4": ("cifar_resnet20", {"base_width": 64}, 32),
    "resnet20x4_g4": ("cifar_resnet20", {"base_width": 64, "derive": {"block": "G4"}}, 32),
    "mobilenetv2": ("mobilenetv2_100", {}, 224),
    "mobilenetv3_large": ("mobilenetv3_large_100", {}, 224),
    "efficientnet_lite0": ("efficientnet_lite0", {}, 224),
    "efficientnet_b0": ("efficientnet_b0", {}, 224),
    "mnasnet": ("mnasnet_100", {}, 224),
    "resnet18": ("resnet18", {}, 224),
}
BATCHES = {32: [1, 32], 224: [1, 8]}  # per input size, unless --batches
TARGETS = {"resnet20x4_g4": 1.3}  # every other model: 1.0 (over the faster peer)
PEERS = ("onnxruntime int8", "openvino int8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default: 1 and 32 at 32x32, 1 and 8 at 224x224")
    parser.add_argument("--sources", nargs="+", default=["ours", "ort"], choices=["ours", "ort"],
                        help="whose QDQ file: our to_onnx export or ONNX Runtime's quantize_static")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per measurement")
    parser.add_argument("--image-size", type=int, default=None, help="default: each model's own (MODELS)")
    parser.add_argument("--out", default="outputs/bench/runtime")
    return parser.parse_args()


def build_files(name: str, shape: tuple[int, int, int], folder: Path) -> dict:
    """The float model, its FP32 ONNX file and the two QDQ files; returns paths, MACs and the torch model."""
    import torch

    from lightning_edge.export import to_onnx
    from lightning_edge.models import create_model, profile_model
    from lightning_edge.quant import calibrate
    from lightning_edge.runtime.benchmark import quantize_static_qdq

    model_name, kwargs, _ = MODELS[name]
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
    from lightning_edge.runtime.benchmark import alternating, onnxruntime_session, openvino_session

    qdq = built["paths"][source]
    edge = str(folder / f"{source}_b{batch}.edge")
    plan = compile(qdq, edge, tune_batch=batch, threads=args.threads)
    session = load(edge, threads=args.threads)
    bf16 = None
    if args.native_bf16:  # our bfloat16 run of the FP32 file (INT8_SPEC rule 20)
        bf16_edge = str(folder / "fp32_bf16.edge")
        if not Path(bf16_edge).exists():
            compile(built["paths"]["fp32"], bf16_edge, select=False, precision="bf16")
        bf16 = load(bf16_edge, threads=args.threads)
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

    openvino_infer, openvino_precisions = openvino_session(qdq, args.threads)
    candidates = {
        "lightning-edge int8": lambda: session.run(x),
        "onnxruntime int8": lambda: ort_int8.run(None, {"input": x}),
        "openvino int8": lambda: openvino_infer(x),
        "onnxruntime fp32": lambda: ort_fp32.run(None, {"input": x}),
        "pytorch fp32": torch_fp32,
    }
    if bf16 is not None:
        candidates["lightning-edge bf16"] = lambda: bf16.run(x)
    calls = 10 if batch == 1 else 5
    times = alternating(candidates, rounds=args.rounds, calls=calls, discard=2)
    medians = {key: float(np.median(value)) * 1e3 for key, value in times.items()}
    ops = 2.0 * built["macs"] * batch
    peak = args.peak
    ours = medians["lightning-edge int8"]
    return {
        "model": name, "source": source, "size": shape[-1], "batch": batch, "threads": args.threads,
        "mmacs": built["macs"] / 1e6, "ms": medians,
        "speedup": {peer: medians[peer] / ours for peer in PEERS},
        "speedup_vs_best_peer": min(medians[peer] for peer in PEERS) / ours,
        "target": TARGETS.get(name, 1.0),
        "openvino_precisions": openvino_precisions,
        "peak_fraction": {key: ops / (medians[key] / 1e3) / peak for key in ("lightning-edge int8", *PEERS)}
        if peak else None,
        "kernels": session.kernels,
        "primitives": sorted({op.primitive for op in plan.ops if getattr(op, "primitive", None)}),
    }


def table(results: list[dict], machine: dict, peak: float) -> str:
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, flags {', '.join(machine['flags'])}; kernel path "
        f"{results[0]['kernels'] if results else '?'}; {results[0]['threads'] if results else '?'} threads; "
        f"measured int8 peak {peak / 1e9:.0f} GOP/s; medians of alternating blocks.",
        "",
        "| model (MMACs) | input | QDQ from | batch | ours int8 ms | ORT int8 ms | OpenVINO int8 ms | ORT fp32 ms | "
        "torch fp32 ms | ours bf16 ms | ours vs faster peer (target) | vs ORT / OpenVINO | "
        "% of int8 peak: ours / ORT / OpenVINO |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ms = r["ms"]
        peak = (" / ".join(f"{100 * r['peak_fraction'][key]:.0f}%" for key in ("lightning-edge int8", *PEERS))
                if r["peak_fraction"] else "n/a")
        verdict = "" if r["speedup_vs_best_peer"] >= r["target"] else " **miss**"
        bf16 = f"{ms['lightning-edge bf16']:.3f}" if "lightning-edge bf16" in ms else "n/a"
        lines.append(
            f"| {r['model']} ({r['mmacs']:.0f}) | {r['size']}x{r['size']} | {r['source']} | {r['batch']} | "
            f"{ms['lightning-edge int8']:.3f} | {ms['onnxruntime int8']:.3f} | {ms['openvino int8']:.3f} | "
            f"{ms['onnxruntime fp32']:.3f} | {ms['pytorch fp32']:.3f} | "
            f"{bf16} | "
            f"{r['speedup_vs_best_peer']:.2f}x ({r['target']:.1f}x){verdict} | "
            f"{r['speedup']['onnxruntime int8']:.2f}x / {r['speedup']['openvino int8']:.2f}x | {peak} |")
    if not any("lightning-edge bf16" in r["ms"] for r in results):
        lines += ["", "ours bf16: n/a, this CPU has no AVX512_BF16 (the exact float32 emulation is not a speed path)."]
    precisions = sorted({str(r["openvino_precisions"]) for r in results})
    lines += ["", f"OpenVINO's runtime precisions of convolutions and fully connected layers: {'; '.join(precisions)}."]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    from lightning_edge.runtime.benchmark import machine
    from lightning_edge.runtime.native import engine_module

    args.peak = engine_module().int8_peak_ops(args.threads, 0.3) or None
    from lightning_edge.runtime.native import available_kernels, cpu_flags

    # BF16 is timed where it has its native path (vdpbf16ps); elsewhere it runs the exact float32 emulation,
    # a reference path that is not meant to be fast (at 224x224 it would take most of the benchmark's time).
    args.native_bf16 = "avx512_bf16" in cpu_flags() and "avx512" in available_kernels()

    out = Path(args.out)
    info = machine()
    print(f"cpu {info['cpu']}, flags {', '.join(info['flags'])}, kernels {', '.join(info['kernels'])}", flush=True)
    results = []
    started = time.perf_counter()
    for name in args.models:
        size = args.image_size or MODELS[name][2]
        shape = (3, size, size)
        folder = out / f"{name}_{size}"
        built = build_files(name, shape, folder)
        for source in args.sources:
            for batch in args.batches or BATCHES.get(size, [1, 8]):
                result = measure(name, built, source, batch, args, folder)
                results.append(result)
                ms = result["ms"]
                print(f"{name:18s} {size:3d} {source:4s} b{batch:<3d} ours {ms['lightning-edge int8']:8.3f} ms  "
                      f"ORT {ms['onnxruntime int8']:8.3f}  OpenVINO {ms['openvino int8']:8.3f}  "
                      f"x{result['speedup_vs_best_peer']:.2f} of the faster", flush=True)
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
