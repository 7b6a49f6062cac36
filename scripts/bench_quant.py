"""INT8 accuracy and QAT cost on one trained FP32 network: FP32 vs PTQ vs QAT, all run through ONNX Runtime.

    .venv/bin/python scripts/bench_quant.py --fp32-ckpt outputs/baseline/runs/DATE_TIME/checkpoints/epoch_004.ckpt

Three runs of train.py from the same checkpoint, each ending with our ONNX export evaluated on the whole
test set in ONNX Runtime:
  fp32: test only, exported as plain FP32 ONNX;
  ptq:  post-training quantization (calibrated on validation batches), exported as QDQ;
  qat:  QAT fine-tune (--qat-epochs at --qat-lr, cosine to 0), exported as QDQ; once per --seeds value
        (the seed sets data order and augmentation), reported as mean and standard deviation.
Then the cost of a QAT training step against an FP32 step: forward, backward and SGD update on one real
batch, the two alternating in rounds on the same input and thread count; the ratio is per round.
Writes OUT/results.json and OUT/results.md. Finished train.py runs are reused (delete OUT/NAME to redo one).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32-ckpt", required=True, help="a train.py checkpoint of the float network")
    parser.add_argument("--model", default="cifar_resnet20", help="its model.name")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1], help="QAT fine-tunes, one per seed")
    parser.add_argument("--ptq-batches", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=11, help="alternating rounds of the step-cost comparison")
    parser.add_argument("--steps", type=int, default=10, help="training steps per variant and round")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="outputs/bench/quant")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every train.py run (data=...)")
    return parser.parse_args()


def run_train(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    """One train.py run into OUT/NAME; its summary.json (reused when it already exists)."""
    output = Path(args.out) / name
    summary_path = output / "summary.json"
    command = [
        sys.executable, "train.py", f"model.name={args.model}", f"model.checkpoint_path={os.path.abspath(args.fp32_ckpt)}",
        f"task_name=bench_quant_{name}", f"paths.output_dir={output.resolve()}", f"hydra.run.dir={output.resolve()}",
        "logger=none", *overrides, *args.overrides,
    ]
    if not summary_path.is_file():
        print(f"[{name}] {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True)
        print(f"[{name}] done in {time.perf_counter() - started:.0f} s", flush=True)
    summary = json.loads(summary_path.read_text())
    summary["bench_command"] = " ".join(["python", *command[1:]])
    return summary


def step_cost(args: argparse.Namespace) -> dict:
    """Median time of an FP32 and a QAT training step (same batch, same threads, alternating rounds)."""
    import torch
    import torch.nn.functional as F

    from lightning_edge.data.fashion_mnist import FashionMNISTDataModule
    from lightning_edge.models import create_model, load_weights
    from lightning_edge.quant import prepare_qat

    torch.set_num_threads(args.threads)
    data = FashionMNISTDataModule(batch_size=args.batch_size, crop_padding=2)
    data.prepare_data()
    data.setup("fit")
    images, labels = next(iter(data.train_dataloader()))
    float_net = create_model(args.model, num_classes=10, in_chans=1)
    load_weights(float_net, args.fp32_ckpt)
    variants = {"fp32": float_net, "qat": prepare_qat(copy.deepcopy(float_net))}
    optimizers = {name: torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9) for name, net in variants.items()}

    def train_steps(name: str, steps: int) -> float:
        net, optimizer = variants[name].train(), optimizers[name]
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(images), labels).backward()
            optimizer.step()
        return (time.perf_counter() - started) / steps

    for name in variants:
        train_steps(name, 3)  # warm-up: allocator, kernels, observers
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name in variants:
            times[name].append(train_steps(name, args.steps))
    ratios = [q / f for q, f in zip(times["qat"], times["fp32"])]
    return {
        "fp32_step_ms": round(1000 * statistics.median(times["fp32"]), 1),
        "qat_step_ms": round(1000 * statistics.median(times["qat"]), 1),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_per_round": [round(ratio, 3) for ratio in ratios],
        "batch_size": args.batch_size, "threads": args.threads, "rounds": args.rounds, "steps_per_round": args.steps,
    }


def _mean_std(values: list[float]) -> str:
    spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{100 * statistics.mean(values):.2f}%{spread}"


def table(results: dict) -> str:
    runs = results["runs"]
    fp32 = runs["fp32"]["export"]["onnxruntime"]["acc"]
    rows = [
        "| network | torch top-1 | ONNX Runtime top-1 (our export) | vs FP32 in ONNX Runtime | argmax agreement torch/ORT | .onnx size |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    groups = [("FP32", ["fp32"]), ("PTQ (INT8)", ["ptq"]),
              (f"QAT (INT8), {len(results['seeds'])} seeds", [f"qat_seed{seed}" for seed in results["seeds"]])]
    for label, names in groups:
        torch_acc = [runs[name]["test"]["acc"] for name in names]
        ort_acc = [runs[name]["export"]["onnxruntime"]["acc"] for name in names]
        agreement = [runs[name]["export"]["onnxruntime"]["agreement"] for name in names]
        rows.append(
            f"| {label} | {_mean_std(torch_acc)} | {_mean_std(ort_acc)} | {100 * (statistics.mean(ort_acc) - fp32):+.2f} | "
            f"{100 * min(agreement):.2f}% (lowest) | {runs[names[0]]['export']['bytes'] / 1024:.0f} KiB |"
        )
    cost = results["step_cost"]
    rows += [
        "",
        f"Training step, batch {cost['batch_size']}, {cost['threads']} threads, median of {cost['rounds']} alternating rounds: "
        f"FP32 {cost['fp32_step_ms']} ms, QAT {cost['qat_step_ms']} ms, ratio {cost['ratio_median']} "
        f"(per round: {', '.join(str(r) for r in cost['ratio_per_round'])}).",
    ]
    return "\n".join(rows) + "\n"


def main() -> None:
    args = parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    runs = {
        "fp32": run_train("fp32", ["train=false", "export.onnx=true"], args),
        "ptq": run_train("ptq", ["train=false", "quant=ptq", f"quant.num_batches={args.ptq_batches}"], args),
    }
    for seed in args.seeds:
        runs[f"qat_seed{seed}"] = run_train(f"qat_seed{seed}", [
            "quant=qat", f"trainer.max_epochs={args.qat_epochs}", f"optimizer.lr={args.qat_lr}",
            "scheduler.warmup_epochs=0", f"seed={seed}",
        ], args)
    results = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "fp32_checkpoint": args.fp32_ckpt,
        "seeds": args.seeds,
        "runs": {name: {key: run.get(key) for key in ("test", "export", "quant", "wall_time_s", "bench_command")}
                 for name, run in runs.items()},
        "step_cost": step_cost(args),
    }
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = table(results)
    (Path(args.out) / "results.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
