"""BF16 in our runtime against ONNX Runtime FP32 on the same FP32 ONNX file: accuracy and speed.

    .venv/bin/python scripts/bench_bf16.py --run outputs/baseline/runs/DATE_TIME \\
        --timm mobilenetv2_100 --timm-size 224 --timm-batches 1

Each ``--run`` (a finished train.py run) is rebuilt from checkpoints/last.ckpt and exported as an FP32 ONNX
file; ``compile(..., precision="bf16")`` makes our .edge file of it (INT8_SPEC rule 20). Reported: test top-1 on
the run's whole test set of ONNX Runtime FP32 and of our BF16 file, and the median, mean and p99 latency of the
two on one random input at the run's own size (batches 1 and 32), alternating in blocks with idle gaps on the
same thread count; the speed-up is ONNX Runtime's median over ours. ``--timm NAME`` adds a timm network with
random weights at ``--timm-size`` (speed only: no data at that size here). The CPU flags and the kernel path
head the output (BF16 uses vdpbf16ps only where the flags include avx512_bf16). ``--fp16`` adds each run's
test top-1 compiled with ``precision="fp16"`` (accuracy only: half arithmetic runs natively on aarch64, emulated
here). Writes OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.bench_sparse import load_run, test_accuracy  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="a finished train.py run folder (accuracy and speed)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batch sizes for the runs")
    parser.add_argument("--timm", action="append", default=[], help="a timm model name, random weights (speed only)")
    parser.add_argument("--timm-size", type=int, default=224)
    parser.add_argument("--timm-batches", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per measurement")
    parser.add_argument("--fp16", action="store_true",
                        help="also the test top-1 of each run compiled with precision='fp16' (rule 21: half arithmetic, "
                             "NEON's on aarch64; emulated here, so accuracy only, no speed)")
    parser.add_argument("--out", default="outputs/bench/bf16")
    return parser.parse_args()


def fp32_file(network, shape: tuple[int, int, int], path: Path) -> str:
    """``network`` in eval mode as an FP32 ONNX file with a dynamic batch axis."""
    import torch

    torch.onnx.export(network.eval(), torch.zeros(1, *shape), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return str(path)


def onnxruntime_accuracy(session, data) -> float:
    correct = total = 0
    for images, labels in data.test_dataloader():
        correct += int((session.run(None, {"input": images.numpy()})[0].argmax(1) == labels.numpy()).sum())
        total += len(labels)
    return correct / total


def speed(onnx_path: str, edge_path: str, shape: tuple[int, int, int], batch: int, threads: int, rounds: int) -> dict:
    from lightning_edge.runtime import load
    from lightning_edge.runtime.benchmark import alternating, median_ms, onnxruntime_session, ratio

    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    peer, ours = onnxruntime_session(onnx_path, threads), load(edge_path, threads=threads)
    times = alternating({"onnxruntime_fp32": lambda: peer.run(None, {"input": x}), "ours_bf16": lambda: ours.run(x)},
                        rounds=rounds)
    entry = {"shape": list(shape), "batch": batch, "speedup": ratio(times, "onnxruntime_fp32", "ours_bf16")}
    for name, values in times.items():
        entry[name] = {"median_ms": median_ms(values), "mean_ms": float(np.mean(values)) * 1e3,
                       "p99_ms": float(np.percentile(values, 99)) * 1e3}
    print(f"  {'x'.join(map(str, shape))} batch {batch}: ONNX Runtime FP32 {entry['onnxruntime_fp32']['median_ms']:.3f} ms, "
          f"ours BF16 {entry['ours_bf16']['median_ms']:.3f} ms, {entry['speedup']:.2f}x", flush=True)
    return entry


def main() -> int:
    import torch

    from lightning_edge.runtime import compile
    from lightning_edge.runtime.benchmark import machine, onnxruntime_session

    args = parse_args()
    if not args.run and not args.timm:
        raise SystemExit("nothing to measure: pass --run RUN_FOLDER and/or --timm MODEL_NAME")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    info = machine()
    path = "vdpbf16ps (AVX512_BF16)" if "avx512_bf16" in info["flags"] and "avx512" in info["kernels"] else "exact float32 fma"
    print(f"cpu {info['cpu']}, flags {', '.join(info['flags'])}, kernels {', '.join(info['kernels'])}; bf16 path: {path}", flush=True)
    rows = []
    for run in args.run:
        network, summary, data = load_run(Path(run))
        data.setup("test")
        shape = tuple(summary["input_shape"])
        name = summary.get("model", network.__class__.__name__)
        onnx_path = fp32_file(network, shape, out / f"{Path(run).name}.onnx")
        edge_path = str(out / f"{Path(run).name}.bf16.edge")
        compile(onnx_path, edge_path, select=False, precision="bf16")
        row = {"network": name, "run": run, "accuracy": {
            "onnxruntime_fp32": onnxruntime_accuracy(onnxruntime_session(onnx_path, args.threads), data),
            "ours_bf16": test_accuracy(edge_path, data, args.threads)}}
        if args.fp16:
            fp16_path = str(out / f"{Path(run).name}.fp16.edge")
            compile(onnx_path, fp16_path, select=False, precision="fp16")
            row["accuracy"]["ours_fp16"] = test_accuracy(fp16_path, data, args.threads)
        print(f"{name}: test top-1 {row['accuracy']}", flush=True)
        row["speed"] = [speed(onnx_path, edge_path, shape, batch, args.threads, args.rounds) for batch in args.batches]
        rows.append(row)
    for name in args.timm:
        import timm

        torch.manual_seed(0)
        shape = (3, args.timm_size, args.timm_size)
        onnx_path = fp32_file(timm.create_model(name, pretrained=False), shape, out / f"{name}.onnx")
        edge_path = str(out / f"{name}.bf16.edge")
        compile(onnx_path, edge_path, select=False, precision="bf16")
        print(f"{name} (random weights):", flush=True)
        rows.append({"network": name, "run": None, "accuracy": None,
                     "speed": [speed(onnx_path, edge_path, shape, batch, args.threads, args.rounds) for batch in args.timm_batches]})
    (out / "results.json").write_text(json.dumps({"machine": info, "bf16_path": path, "threads": args.threads, "rows": rows}, indent=2))
    (out / "results.md").write_text(markdown(info, path, args.threads, rows))
    print(markdown(info, path, args.threads, rows))
    return 0


def markdown(info: dict, path: str, threads: int, rows: list[dict]) -> str:
    fp16 = any(row["accuracy"] and "ours_fp16" in row["accuracy"] for row in rows)
    lines = [f"{info['cpu']}, flags {', '.join(info['flags'])}; bf16 path {path}; {threads} threads.", "",
             "| network | input | batch | ONNX Runtime FP32 median / mean / p99 | ours BF16 median / mean / p99 | speed-up | "
             f"top-1 FP32 / BF16{' / FP16' if fp16 else ''} |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        acc = row["accuracy"]
        accuracy = f"{acc['onnxruntime_fp32']:.2%} / {acc['ours_bf16']:.2%}" if acc else "(random weights)"
        if acc and "ours_fp16" in acc:
            accuracy += f" / {acc['ours_fp16']:.2%}"
        for e in row["speed"]:
            peer, ours = e["onnxruntime_fp32"], e["ours_bf16"]
            lines.append(f"| {row['network']} | {'x'.join(map(str, e['shape']))} | {e['batch']} | "
                         f"{peer['median_ms']:.3f} / {peer['mean_ms']:.3f} / {peer['p99_ms']:.3f} ms | "
                         f"{ours['median_ms']:.3f} / {ours['mean_ms']:.3f} / {ours['p99_ms']:.3f} ms | **{e['speedup']:.2f}x** | {accuracy} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
