"""Pruned networks against their dense original: accuracy, size, MACs, bytes, and speed in PyTorch.

    .venv/bin/python scripts/bench_pruning.py --dense outputs/baseline/runs/DATE_TIME \\
        --pruned outputs/gmp_resnet20/runs/DATE_TIME outputs/channel_resnet20/runs/DATE_TIME

Each argument is a train.py run folder (summary.json and checkpoints/last.ckpt). The network is rebuilt from
the checkpoint the way every loader here does it (``network_from_checkpoint``: a channel-pruned one gets its
recorded widths, a magnitude-pruned one its masks). Reported per run: test accuracy (summary.json), parameters,
MACs, the fraction of zero weights, weight bytes in FP32, INT8 dense and INT8 as the runtime's .edge file stores
them (sparse tensors compressed), and PyTorch FP32 eager latency at batch 1 and 32 on one input and the same
thread count, all networks alternating in blocks (speed-up: the dense median over each network's median).
Writes OUT/results.json, OUT/results.md and OUT/results.png (accuracy against MACs and against stored bytes).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense", required=True, help="the dense run's folder")
    parser.add_argument("--pruned", nargs="+", required=True, help="pruned runs' folders")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "pruning"))
    return parser.parse_args()


def describe(run: Path) -> tuple[dict, torch.nn.Module]:
    from lightning_edge.export.checkpoint import network_from_checkpoint
    from lightning_edge.models.profile import count_macs, count_parameters, weight_bytes

    summary_path, checkpoint = run / "summary.json", run / "checkpoints" / "last.ckpt"
    for path in (summary_path, checkpoint):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: pass the folder of a finished train.py run")
    summary = json.loads(summary_path.read_text())
    network = network_from_checkpoint(checkpoint)
    shape = tuple(summary["input_shape"])
    weights = [m.weight for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    row = {
        "run": str(run), "task": summary.get("task_name"), "test_acc": summary["test"].get("acc"),
        "parameters": count_parameters(network), "macs": count_macs(network, shape), "zero_weights": zeros,
        "weight_bytes": weight_bytes(network), "input_shape": list(shape),
    }
    return row, network


def main() -> int:
    from lightning_edge.runtime.benchmark import alternating, machine, median_ms, ratio

    args = parse_args()
    torch.set_num_threads(args.threads)
    dense_row, dense = describe(Path(args.dense))
    dense_row["label"] = f"{dense_row['task']} (dense)"
    rows = [dense_row]
    networks = [dense]
    for run in args.pruned:
        row, network = describe(Path(run))
        macs_removed = 1 - row["macs"] / dense_row["macs"]
        row["label"] = (f"{row['task']} ({row['zero_weights']:.0%} zeros)" if row["zero_weights"] > 0.01
                        else f"{row['task']} (-{macs_removed:.0%} MACs)")
        rows.append(row)
        networks.append(network)
    torch.manual_seed(0)
    for batch in args.batches:  # every network in one alternating loop: the same conditions for all
        x = torch.randn(batch, *dense_row["input_shape"])
        candidates = {str(index): (lambda network=network: network(x)) for index, network in enumerate(networks)}
        with torch.inference_mode():
            times = alternating(candidates, rounds=args.rounds)
        for index, row in enumerate(rows):
            row[f"b{batch}_ms"] = median_ms(times[str(index)])
            row[f"b{batch}_speedup"] = ratio(times, "0", str(index))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "threads": args.threads, "torch": torch.__version__, "rows": rows,
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    lines = [f"PyTorch {torch.__version__} FP32 eager, {args.threads} threads, {report['machine'].get('cpu', '')}", "",
             "| run | test acc | parameters | MMACs | zero weights | INT8 KiB dense / stored | "
             + " | ".join(f"speed-up b{b}" for b in args.batches) + " |",
             "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in args.batches) + " |"]
    for row in rows:
        speed = " | ".join(f"{row[f'b{b}_speedup']:.2f}x ({row[f'b{b}_ms']:.2f} ms)" for b in args.batches)
        lines.append(f"| {row['label']} | {100 * row['test_acc']:.2f}% | {row['parameters']:,} | {row['macs'] / 1e6:.1f} | "
                     f"{row['zero_weights']:.1%} | {row['weight_bytes']['int8_dense'] / 1024:.0f} / "
                     f"{row['weight_bytes']['int8_sparse'] / 1024:.0f} | {speed} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "results.png")
    print("\n".join(lines))
    return 0


def plot(rows: list[dict], path: Path) -> None:
    """Test accuracy against MACs and against INT8 bytes as stored, one labelled point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, key, label in ((axes[0], "macs", "MMACs per image"), (axes[1], "bytes", "INT8 weights stored (KiB)")):
        for row in rows:
            x = row["macs"] / 1e6 if key == "macs" else row["weight_bytes"]["int8_sparse"] / 1024
            axis.scatter(x, 100 * row["test_acc"], s=40)
            axis.annotate(row["label"], (x, 100 * row["test_acc"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 (%)")
    figure.suptitle("Pruned against dense (Fashion-MNIST)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
