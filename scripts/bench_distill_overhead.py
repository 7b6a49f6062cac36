"""What distillation adds to a training step: seconds per step with KnowledgeDistillation (KD+AT) over without.

    .venv/bin/python scripts/bench_distill_overhead.py                      # ResNet-20 student, ResNet-56 teacher
    .venv/bin/python scripts/bench_distill_overhead.py --teacher cifar_wrn_16_2 --batch-size 64 --threads 2

Three measurements on the same Fashion-MNIST batches (random images if the data set is not installed),
the same thread count, alternated round by round so drift hits them all alike:

- ``student``: a Lightning training step of the plain student (forward, loss, backward, SGD step);
- ``distill``: the same step with ``KnowledgeDistillation(teacher, losses=["kd", "at"])``;
- ``teacher``: the teacher's forward pass alone (eval, no_grad), the one cost distillation cannot avoid.

The target: ``distill - student <= teacher + 10% of student``. Writes JSON and a Markdown table to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_edge.callbacks import KnowledgeDistillation  # noqa: E402
from lightning_edge.data.fashion_mnist import FashionMNISTDataModule  # noqa: E402
from lightning_edge.data.errors import DataNotFoundError  # noqa: E402
from lightning_edge.io import atomic_write_bytes, atomic_write_json  # noqa: E402
from lightning_edge.models import create_model  # noqa: E402
from lightning_edge.module import ClassificationModule  # noqa: E402


def synchronize() -> None:
    """Wait for queued GPU work, so wall time covers it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StepTimer(Callback):
    """Wall time of each training step, from batch start to the end of the optimizer step."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        synchronize()
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize()
        self.seconds.append(time.perf_counter() - self._started)


def load_batches(batch_size: int, count: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """``count`` training batches of Fashion-MNIST, or of random images when it is not installed."""
    try:
        datamodule = FashionMNISTDataModule(batch_size=batch_size, num_workers=0, download=False)
        datamodule.prepare_data()
        datamodule.setup("fit")
        batches = []
        for batch in datamodule.train_dataloader():
            batches.append(batch)
            if len(batches) == count:
                break
        return batches, "fashion_mnist"
    except DataNotFoundError:
        generator = torch.Generator().manual_seed(0)
        return [
            (torch.randn(batch_size, 1, 28, 28, generator=generator), torch.randint(0, 10, (batch_size,), generator=generator))
            for _ in range(count)
        ], "random"


def time_training(student_name: str, batches, teacher: torch.nn.Module | None, accelerator: str, precision: str) -> list[float]:
    """Per-step seconds of a fresh student trained on ``batches``, with distillation when ``teacher`` is given."""
    torch.manual_seed(0)
    module = ClassificationModule({"name": student_name, "num_classes": 10, "in_chans": 1})
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    if teacher is not None:
        callbacks.insert(0, KnowledgeDistillation(teacher=teacher, losses=["kd", "at"]))
    trainer = pl.Trainer(
        accelerator=accelerator, precision=precision, devices=1, max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
    )
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    return timer.seconds


def time_teacher(teacher: torch.nn.Module, batches, device: torch.device, precision: str) -> list[float]:
    """The teacher's forward pass alone, in the precision the training steps use."""
    seconds = []
    teacher.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    with torch.no_grad(), autocast:
        for images, _ in batches:
            images = images.to(device)
            synchronize()
            started = time.perf_counter()
            teacher(images)
            synchronize()
            seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="cifar_resnet20")
    parser.add_argument("--teacher", default="cifar_resnet56")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "distill_overhead"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    pl.utilities.disable_possible_user_warnings()
    batches, data = load_batches(args.batch_size, args.warmup + args.steps)
    teacher = create_model(args.teacher, num_classes=10, in_chans=1).eval().requires_grad_(False)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    samples: dict[str, list[float]] = {"student": [], "distill": [], "teacher": []}
    for round_index in range(args.rounds):
        samples["student"] += time_training(args.student, batches, None, args.accelerator, args.precision)[args.warmup:]
        samples["distill"] += time_training(args.student, batches, teacher, args.accelerator, args.precision)[args.warmup:]
        samples["teacher"] += time_teacher(teacher, batches, device, args.precision)[args.warmup:]
        medians = {name: statistics.median(values) for name, values in samples.items()}
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in medians.items()), flush=True)

    student, distill, teacher_forward = (statistics.median(samples[k]) for k in ("student", "distill", "teacher"))
    overhead = distill - student
    budget = teacher_forward + 0.1 * student
    result = {
        "student": args.student,
        "teacher": args.teacher,
        "data": data,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "accelerator": torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu",
        "precision": args.precision,
        "timed_steps_per_variant": len(samples["student"]),
        "median_seconds": {"student_step": student, "distill_step": distill, "teacher_forward": teacher_forward},
        "overhead_seconds": overhead,
        "overhead_beyond_teacher_forward_fraction_of_student_step": (overhead - teacher_forward) / student,
        "target_seconds": budget,
        "meets_target": overhead <= budget,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "versions": {"torch": torch.__version__, "pytorch_lightning": pl.__version__},
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
    }
    table = "\n".join([
        f"| {args.student} step | + KD+AT ({args.teacher} teacher) | teacher forward | added | added beyond teacher forward |",
        "| --- | --- | --- | --- | --- |",
        f"| {student * 1000:.0f} ms | {distill * 1000:.0f} ms | {teacher_forward * 1000:.0f} ms | {overhead * 1000:.0f} ms "
        f"| {(overhead - teacher_forward) * 1000:.0f} ms ({100 * (overhead - teacher_forward) / student:.1f}% of the student step) |",
    ])
    out = Path(args.out)
    atomic_write_json(out / "result.json", result)
    atomic_write_bytes(out / "result.md", (table + "\n").encode())
    print(table)
    print(f"target (teacher forward + 10% of student step = {budget * 1000:.0f} ms): {'met' if result['meets_target'] else 'MISSED'}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
