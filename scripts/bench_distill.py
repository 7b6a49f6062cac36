"""Does distillation pay? One Moonshine student at one equal budget: from scratch, with KD, with AT, with KD+AT.

    .venv/bin/python scripts/bench_distill.py --teacher-ckpt outputs/moonshine_resnet/runs/DATE/teacher/checkpoints/epoch_004.ckpt
    .venv/bin/python scripts/bench_distill.py --epochs 2 --seeds 0 1 2 --block B2      # trains its own teacher first

Every variant trains the same derived student (``recipe=moonshine_resnet``: ResNet-20 on Fashion-MNIST,
its student ``--block``) for ``--epochs`` epochs with the recipe's optimizer and schedule, once per seed;
runs go seed by seed, variants in turn, so drift hits them alike. The teacher is tested on the same
test set. Writes ``runs.json`` (every run's summary), ``result.json`` and ``result.md`` (mean and standard
deviation of test accuracy, parameters, MACs and wall time per variant) to ``--out``. A run whose
summary.json already exists is read back, not repeated, so an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LIGHTNING_EDGE_ROOT", str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from lightning_edge.io import atomic_write_bytes, atomic_write_json  # noqa: E402
from train import run  # noqa: E402

VARIANTS = {"scratch": "none", "kd": "kd", "at": "at", "kd_at": "kd_at"}
LABELS = {"scratch": "from scratch", "kd": "KD", "at": "AT", "kd_at": "KD + AT"}


def configure(overrides: list[str], output_dir: Path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, f"paths.output_dir={output_dir}", f"paths.log_dir={output_dir}"])


def run_once(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """One train.py run (or its earlier summary)."""
    finished = output_dir / "summary.json"
    if finished.is_file():
        return json.loads(finished.read_text())
    return run(configure(overrides, output_dir))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-ckpt", help="a trained teacher checkpoint; without one the recipe trains the teacher first")
    parser.add_argument("--block", default="G(4)", help="the student's block spec (G(4), DW, B(2), BG(2,4), ...)")
    parser.add_argument("--epochs", type=int, default=1, help="the budget: epochs of every student run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "distill"))
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides for every run, e.g. data.batch_size=64")
    args = parser.parse_args()

    out = Path(args.out)
    common = ["recipe=moonshine_resnet", "logger=none", "callbacks.progress_bar.refresh_rate=0", *args.overrides]
    started = time.perf_counter()
    if args.teacher_ckpt:
        teacher_ckpt = os.path.abspath(args.teacher_ckpt)
    else:
        print("training the teacher (recipe=moonshine_resnet's teacher stage)", flush=True)
        teacher_run = [*common, "distill=none", "student=none", "teacher.train=false", "trainer.max_epochs=${teacher.max_epochs}"]
        teacher = run_once(teacher_run, out / "teacher")
        teacher_ckpt = teacher["checkpoint"]

    runs: list[dict[str, Any]] = []
    total = len(args.seeds) * len(args.variants)
    for seed in args.seeds:
        for variant in args.variants:
            overrides = [
                *common, f"student.block='{args.block}'", f"distill={VARIANTS[variant]}", f"teacher.ckpt={teacher_ckpt}",
                "teacher.train=false",
                f"seed={seed}", f"trainer.max_epochs={args.epochs}",
            ]
            summary = run_once(overrides, out / variant / f"seed{seed}")
            runs.append({"variant": variant, "seed": seed, **summary})
            print(f"[{len(runs)}/{total}] {LABELS[variant]:<12} seed {seed}: test acc {summary['test']['acc']:.4f}, "
                  f"{summary['wall_time_s']:.0f} s", flush=True)

    teacher_test = next((r["distill"]["teacher"] for r in runs if r.get("distill")), None)
    rows = []
    for variant in args.variants:
        chosen = [r for r in runs if r["variant"] == variant]
        accuracy, accuracy_std = mean_std([r["test"]["acc"] for r in chosen])
        wall, _ = mean_std([r["wall_time_s"] for r in chosen])
        rows.append({
            "variant": variant, "seeds": [r["seed"] for r in chosen], "test_acc_mean": accuracy, "test_acc_std": accuracy_std,
            "test_acc": [r["test"]["acc"] for r in chosen], "parameters": chosen[0]["parameters"], "macs": chosen[0]["macs"],
            "wall_time_s_mean": wall,
        })
    result = {
        "recipe": "moonshine_resnet", "block": args.block, "epochs": args.epochs, "seeds": args.seeds,
        "teacher": {"checkpoint": teacher_ckpt, **({k: teacher_test[k] for k in ("parameters", "macs", "test")} if teacher_test else {})},
        "rows": rows, "total_wall_time_s": round(time.perf_counter() - started, 1),
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
    }
    lines = [
        f"| ResNet-20 {args.block} student, {args.epochs} epoch(s) | test top-1 (mean ± std, {len(args.seeds)} seeds) | parameters | MACs | wall time per run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {LABELS[row['variant']]} | {100 * row['test_acc_mean']:.2f}% ± {100 * row['test_acc_std']:.2f} | "
            f"{row['parameters']:,} | {row['macs'] / 1e6:.1f}M | {row['wall_time_s_mean']:.0f} s |"
        )
    if teacher_test:
        lines.append(
            f"| teacher (ResNet-20) | {100 * teacher_test['test']['acc']:.2f}% | {teacher_test['parameters']:,} | "
            f"{teacher_test['macs'] / 1e6:.1f}M | |"
        )
    table = "\n".join(lines) + "\n"
    atomic_write_json(out / "runs.json", runs)
    atomic_write_json(out / "result.json", result)
    atomic_write_bytes(out / "result.md", table.encode())
    print(table + f"written to {out}")


if __name__ == "__main__":
    main()
