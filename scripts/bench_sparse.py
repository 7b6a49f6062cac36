"""Block-sparse networks in our INT8 runtime against their dense originals: accuracy and speed.

    .venv/bin/python scripts/bench_sparse.py \\
        --pair outputs/baseline/runs/DATE_TIME outputs/gmp_block_resnet20/runs/DATE_TIME \\
        --pair outputs/mobilenetv2_fashion_mnist/runs/DATE_TIME outputs/gmp_block_mobilenetv2/runs/DATE_TIME

Each ``--pair`` is a dense train.py run and its pruned fine-tune (``prune=gmp prune.block=[16,4]``; README,
"Sparsity becomes speed"). Both networks are rebuilt from their checkpoints/last.ckpt, calibrated (PTQ) on the
same training batches, exported as QDQ ONNX and compiled by ``lightning_edge.runtime.compile`` with kernels
timed at the batch being measured, so the compiler picks sparse or dense per layer. Reported per pair: the
float test top-1 of each run (summary.json), the INT8 top-1 of each .edge file on the whole test set through
our runtime, the fraction of zero weights and of the zero steps the sparse kernels skip (one tap's 4 input
channels for 16 output channels), the layers that run sparse, and the median latency of the two files
alternating in blocks with idle gaps on one input and the same thread count, at the network's own input size
(batches 1 and 32) and at 224x224 (batches 1 and 8): the speed-up is the dense median over the sparse one.
The kernel path and CPU flags head the table. Writes OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCHES = {"native": [1, 32], 224: [1, 8]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", nargs=2, action="append", required=True, metavar=("DENSE_RUN", "SPARSE_RUN"),
                        help="a dense train.py run folder and its block-pruned fine-tune")
    parser.add_argument("--sizes", nargs="+", default=["native", "224"], help="input sizes: native (the run's) and/or pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per measurement")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--out", default="outputs/bench/sparse")
    return parser.parse_args()


def load_run(run: Path):
    """(network, summary, datamodule) of a finished train.py run folder."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lightning_edge.export.checkpoint import network_from_checkpoint

    paths = {"summary": run / "summary.json", "checkpoint": run / "checkpoints" / "last.ckpt", "config": run / ".hydra" / "config.yaml"}
    for path in paths.values():
        if not path.is_file():
            raise SystemExit(f"{path} is missing: pass the folder of a finished train.py run")
    config = OmegaConf.load(paths["config"])
    data = instantiate(config.data, root=str(ROOT / "data"))
    return network_from_checkpoint(paths["checkpoint"]), json.loads(paths["summary"].read_text()), data


def zero_fractions(network) -> tuple[float, float]:
    """(zero weights, zero steps) over the network's prunable layers: the steps being what the sparse kernels
    skip, one tap's 4 input channels for 16 output channels (``zero_step_fraction``)."""
    import torch

    from lightning_edge.prune import prunable_layers
    from lightning_edge.runtime.selection import zero_step_fraction

    weights = zero_weights = steps = zero_steps = 0.0
    for _, layer in prunable_layers(network):
        w = layer.weight.detach()
        groups, taps = getattr(layer, "groups", 1), int(np.prod(w.shape[2:]))
        codes = (w != 0).to(torch.int8).permute(0, *range(2, w.dim()), 1).reshape(w.shape[0], -1).numpy()  # window order
        layer_steps = groups * -(-w.shape[0] // groups // 16) * taps * -(-w.shape[1] // 4)
        weights, zero_weights = weights + w.numel(), zero_weights + int((w == 0).sum())
        steps, zero_steps = steps + layer_steps, zero_steps + layer_steps * zero_step_fraction(codes, groups, taps)
    return zero_weights / weights, zero_steps / steps


def int8_files(network, data, shape, folder: Path, batches: list[int], threads: int, calibration: list) -> dict[int, str]:
    """The network calibrated on ``calibration``, exported at ``shape`` and compiled once per batch size."""
    import copy

    import torch

    from lightning_edge.export import to_onnx
    from lightning_edge.quant import calibrate
    from lightning_edge.runtime import compile

    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    if not onnx_path.exists():
        quantized = calibrate(copy.deepcopy(network).eval(), calibration, num_batches=len(calibration))
        to_onnx(quantized, torch.zeros(1, *shape), str(onnx_path))
    files = {}
    for batch in batches:
        files[batch] = str(folder / f"b{batch}.edge")
        compile(str(onnx_path), files[batch], tune_batch=batch, threads=threads)
    return files


def test_accuracy(edge_path: str, data, threads: int) -> float:
    from lightning_edge.runtime import load

    session = load(edge_path, threads=threads)
    correct = total = 0
    for images, labels in data.test_dataloader():
        correct += int((session.run(images.numpy()).argmax(1) == labels.numpy()).sum())
        total += len(labels)
    return correct / total


def main() -> int:
    import torch
    import torch.nn.functional as F

    from lightning_edge.runtime import load
    from lightning_edge.runtime.benchmark import alternating, machine, median_ms, ratio

    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    info = machine()
    print(f"cpu {info['cpu']}, flags {', '.join(info['flags'])}, kernels {', '.join(info['kernels'])}", flush=True)
    rows = []
    for dense_run, sparse_run in args.pair:
        runs = {"dense": load_run(Path(dense_run)), "sparse": load_run(Path(sparse_run))}
        data = runs["dense"][2]
        data.setup("fit")
        data.setup("test")
        calibration = [images for images, _ in zip((b[0] for b in data.train_dataloader()), range(args.calibration_batches))]
        native = tuple(runs["dense"][1]["input_shape"])
        name = runs["dense"][0].__class__.__name__
        row = {"dense_run": dense_run, "sparse_run": sparse_run, "network": runs["dense"][1].get("model", name),
               "input_shape": list(native), "float_acc": {k: r[1]["test"].get("acc") for k, r in runs.items()}}
        row["zero_weights"], row["zero_steps"] = zero_fractions(runs["sparse"][0])
        row["speed"], row["int8_acc"] = [], {}
        for size in args.sizes:
            shape = native if size == "native" else (native[0], int(size), int(size))
            batches = BATCHES["native" if size == "native" else 224]
            files = {kind: int8_files(run[0], data, shape, out / Path(dense_run).name / f"{kind}_{shape[1]}", batches,
                                      args.threads, calibration if shape == native else
                                      [F.interpolate(x, size=shape[1:]) for x in calibration])
                     for kind, run in runs.items()}
            if shape == native:
                row["int8_acc"] = {kind: test_accuracy(paths[batches[-1]], data, args.threads) for kind, paths in files.items()}
                plan = load(files["sparse"][batches[-1]]).plan
                row["sparse_layers"] = sum(getattr(op, "algorithm", None) == "sparse" for op in plan.ops)
                row["conv_layers"] = sum(op.kind == "conv" for op in plan.ops)
                print(f"{row['network']}: int8 top-1 {row['int8_acc']}", flush=True)
            for batch in batches:
                x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
                sessions = {kind: load(paths[batch], threads=args.threads) for kind, paths in files.items()}
                times = alternating({kind: (lambda s=s: s.run(x)) for kind, s in sessions.items()}, rounds=args.rounds)
                entry = {"shape": list(shape), "batch": batch, "dense_ms": median_ms(times["dense"]),
                         "sparse_ms": median_ms(times["sparse"]), "speedup": ratio(times, "dense", "sparse"),
                         "dense_p99_ms": float(np.percentile(times["dense"], 99)) * 1e3,
                         "sparse_p99_ms": float(np.percentile(times["sparse"], 99)) * 1e3}
                row["speed"].append(entry)
                print(f"  {shape} batch {batch}: dense {entry['dense_ms']:.3f} ms, sparse {entry['sparse_ms']:.3f} ms, "
                      f"{entry['speedup']:.2f}x", flush=True)
        rows.append(row)
    (out / "results.json").write_text(json.dumps({"machine": info, "threads": args.threads, "rows": rows}, indent=2))
    (out / "results.md").write_text(markdown(info, args.threads, rows))
    print(markdown(info, args.threads, rows))
    return 0


def markdown(info: dict, threads: int, rows: list[dict]) -> str:
    lines = [f"{info['cpu']}, flags {', '.join(info['flags'])}; kernel paths {', '.join(info['kernels'])}; {threads} threads.", "",
             "| network | zero weights / steps | sparse layers | float top-1 dense / sparse | INT8 top-1 dense / sparse (ours) |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        acc, int8 = row["float_acc"], row["int8_acc"]
        lines.append(f"| {row['network']} | {row['zero_weights']:.1%} / {row['zero_steps']:.1%} | {row['sparse_layers']} of "
                     f"{row['conv_layers']} | {acc['dense']:.2%} / {acc['sparse']:.2%} | {int8['dense']:.2%} / {int8['sparse']:.2%} |")
    lines += ["", "| network | input | batch | dense | sparse | speed-up | p99 dense / sparse |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for e in row["speed"]:
            lines.append(f"| {row['network']} | {'x'.join(map(str, e['shape']))} | {e['batch']} | {e['dense_ms']:.3f} ms | "
                         f"{e['sparse_ms']:.3f} ms | **{e['speedup']:.2f}x** | {e['dense_p99_ms']:.3f} / {e['sparse_p99_ms']:.3f} ms |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
