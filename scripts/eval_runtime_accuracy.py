"""INT8 accuracy on the whole Fashion-MNIST test set through our runtime, beside ONNX Runtime on the same file.

    .venv/bin/python scripts/eval_runtime_accuracy.py outputs/bench/quant/qat_seed*/model.onnx \
        outputs/moonshine_resnet/runs/DATE_TIME/model.onnx

Each QDQ file (a train.py export) is compiled to FILE.edge beside it, then both run on the 10,000 test
images with the datamodule's test transform: top-1 of each, the share of images where they pick the same
class, and whether every output is identical. Writes OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", nargs="+", help="QDQ files from train.py (model.onnx)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="outputs/bench/runtime_accuracy")
    args = parser.parse_args()

    from lightning_edge.data.fashion_mnist import FashionMNISTDataModule
    from lightning_edge.runtime import compile, load
    from lightning_edge.runtime.benchmark import onnxruntime_session

    data = FashionMNISTDataModule(batch_size=250, eval_batch_size=250)
    data.setup("test")
    rows = []
    for onnx_path in args.onnx:
        edge_path = str(Path(onnx_path).with_suffix(".edge"))
        compile(onnx_path, edge_path, threads=args.threads)
        ours, theirs = load(edge_path, threads=args.threads), onnxruntime_session(onnx_path, args.threads)
        correct = correct_ort = agree = identical = images = 0
        started = time.perf_counter()
        for images_batch, labels in data.test_dataloader():
            x = images_batch.numpy()
            a, b = ours.run(x), theirs.run(None, {"input": x})[0]
            labels = labels.numpy()
            correct += int((a.argmax(1) == labels).sum())
            correct_ort += int((b.argmax(1) == labels).sum())
            agree += int((a.argmax(1) == b.argmax(1)).sum())
            identical += int((a == b).all(axis=1).sum())
            images += len(x)
        rows.append({"onnx": onnx_path, "edge": edge_path, "images": images, "runtime_acc": correct / images,
                     "onnxruntime_acc": correct_ort / images, "argmax_agreement": agree / images,
                     "identical_outputs": identical / images, "kernels": ours.kernels,
                     "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/eval_runtime_accuracy.py " + " ".join(sys.argv[1:])
    (out / "results.json").write_text(json.dumps({"command": command, "results": rows}, indent=2))
    lines = [f"`{command}`", "", "| file | images | our runtime top-1 | ONNX Runtime top-1 | same class | identical logits | kernels |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['onnx']} | {r['images']} | {100 * r['runtime_acc']:.2f}% | {100 * r['onnxruntime_acc']:.2f}% | "
                     f"{100 * r['argmax_agreement']:.2f}% | {100 * r['identical_outputs']:.2f}% | {r['kernels']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
