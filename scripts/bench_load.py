"""Latency on a shared CPU: our runtime against ONNX Runtime and OpenVINO on the same QDQ file, idle and beside busy
processes.

    .venv/bin/python scripts/bench_load.py                        # resnet20 at 32x32, mobilenetv2 at 224; 0, 1, 2 busy
    .venv/bin/python scripts/bench_load.py --models resnet20 --loads 2 --rounds 10

A phone or a board is rarely idle, and real-time work is judged by its tail, so each row reports the mean,
the median and the 99th percentile of single batch-1 calls, not a median alone. For each model (built as
scripts/bench_runtime.py builds it, random weights, the QDQ file from ``--source``), and for each load (that
many `python -c "while True: pass"` processes started before and stopped after the row), the engines
alternate in blocks of ``--calls`` calls with an idle gap between blocks; every engine gets 2 threads (or
``--threads``; OpenVINO with one stream and its latency hint, when installed). Ours runs three times: with its
default policy (``shared_cpu=None``: the shared-CPU policy while the pool sees contention), with
``shared_cpu=True`` (that policy always) and with ``shared_cpu=False`` (never).

The kernel path and CPU flags are printed; OUT/results.json and OUT/results.md hold every row.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_runtime import MODELS, build_files  # noqa: E402  (the models and their input sizes, built one way)

BUSY = "while True: pass"
# Our engine's rows: the default policy, then the two it chooses between, forced.
OURS = {"ours": None, "ours shared_cpu": True, "ours dedicated": False}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"], choices=list(MODELS))
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2], help="busy processes beside the engines")
    parser.add_argument("--source", default="ort", choices=["ours", "ort"], help="whose QDQ file both engines run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds per row")
    parser.add_argument("--calls", type=int, default=25, help="timed calls per engine per round")
    parser.add_argument("--gap", type=float, default=0.1, help="idle seconds between blocks (runtime.benchmark says why 0.1)")
    parser.add_argument("--out", default="outputs/bench/load")
    return parser.parse_args()


def statistics(seconds: np.ndarray) -> dict[str, float]:
    ms = seconds * 1e3
    return {"mean": float(ms.mean()), "median": float(np.median(ms)), "p99": float(np.percentile(ms, 99)),
            "max": float(ms.max()), "calls": int(ms.size)}


def busy_processes(count: int) -> list[subprocess.Popen]:
    processes = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(count)]
    time.sleep(0.5 if count else 0)  # let them reach the scheduler's steady state
    return processes


def measure_row(name: str, load: int, args: argparse.Namespace, out: Path) -> dict:
    from lightning_edge.runtime import compile, load as load_edge
    from lightning_edge.runtime.benchmark import alternating, onnxruntime_session, openvino_session

    size = MODELS[name][2]
    folder = out / name
    if not (folder / f"{args.source}.onnx").exists():
        build_files(name, (3, size, size), folder)
    qdq = str(folder / f"{args.source}.onnx")
    edge = folder / f"{args.source}.edge"
    if not edge.exists():
        compile(qdq, str(edge), tune_batch=1, threads=args.threads)
    ours = {engine: load_edge(edge, threads=args.threads, shared_cpu=policy) for engine, policy in OURS.items()}
    theirs = onnxruntime_session(qdq, args.threads)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    feed = {theirs.get_inputs()[0].name: x}
    candidates = {engine: (lambda session=session: session.run(x)) for engine, session in ours.items()}
    candidates["onnxruntime"] = lambda: theirs.run(None, feed)
    precisions = None
    try:
        infer, precisions = openvino_session(qdq, args.threads)
        candidates["openvino"] = lambda: infer(x)
    except ImportError:
        print("openvino is not installed (pip install -e '.[dev]'): no OpenVINO column", flush=True)
    for call in candidates.values():  # warm every engine before the clock starts
        for _ in range(5):
            call()
    processes = busy_processes(load)
    try:
        times = alternating(candidates, args.rounds, args.calls + 2, discard=2, gap=args.gap)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    stats = {engine: statistics(np.asarray(value)) for engine, value in times.items()}
    reference = stats["onnxruntime"]
    ratios = {engine: {key: stats[engine][key] / reference[key] for key in ("mean", "median", "p99")}
              for engine in OURS}
    return {"model": name, "size": size, "busy": load, "source": args.source, "threads": args.threads,
            "kernels": ours["ours"].kernels, "openvino_precisions": precisions, "ms": stats, "ours_over_ort": ratios}


def table(rows: list[dict]) -> str:
    lines = ["| model, input | busy processes | engine | mean ms | median ms | p99 ms | mean / ORT | p99 / ORT |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for engine, stats in row["ms"].items():
            ratio = row["ours_over_ort"].get(engine)
            cells = (f"{ratio['mean']:.2f}x", f"{ratio['p99']:.2f}x") if ratio else ("", "")
            lines.append(f"| {row['model']}, {row['size']}x{row['size']} | {row['busy']} | {engine} | "
                         f"{stats['mean']:.3f} | {stats['median']:.3f} | {stats['p99']:.3f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    from lightning_edge.runtime.benchmark import machine

    info = machine()
    print(f"CPU: {info['cpu']}, {info['cores']} cores; kernel paths {info['kernels']}; flags {' '.join(info['flags'])}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    for name in args.models:
        for load in args.loads:
            row = measure_row(name, load, args, out)
            rows.append(row)
            mine = " | ".join(f"{engine} mean {row['ms'][engine]['mean']:.3f} p99 {row['ms'][engine]['p99']:.3f} "
                              f"({row['ours_over_ort'][engine]['mean']:.2f}x, {row['ours_over_ort'][engine]['p99']:.2f}x)"
                              for engine in OURS)
            print(f"{name:12s} busy={load} [{row['kernels']}] {mine} | ORT mean {row['ms']['onnxruntime']['mean']:.3f} "
                  f"p99 {row['ms']['onnxruntime']['p99']:.3f} ms", flush=True)
    command = "python scripts/bench_load.py " + " ".join(sys.argv[1:])
    payload = {"command": command.strip(), "machine": info, "rows": rows,
               "seconds": round(time.perf_counter() - started, 1)}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    markdown = f"`{payload['command']}` ({payload['seconds']:.0f} s; {info['cpu']}, {info['cores']} cores)\n\n{table(rows)}\n"
    (out / "results.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
