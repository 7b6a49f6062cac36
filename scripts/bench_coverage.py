"""Which mainstream edge CNNs the INT8 reference and runtime cover, on ONNX Runtime's and our own QDQ files.

    .venv/bin/python scripts/bench_coverage.py                          # all networks, 160x160, 64 inputs
    .venv/bin/python scripts/bench_coverage.py --models resnet18 lcnet_050 --size 64 --inputs 16

Per network (random weights, BatchNorm statistics from two random batches; timm or torchvision, nothing is
downloaded): the FP32 ONNX file (opset 17, TorchScript exporter), ONNX Runtime's ``quantize_static`` QDQ file
(per-channel int8 weights, uint8 activations, calibrated on random batches) and our QAT export
(``prepare_qat`` + ``calibrate`` + ``to_onnx``, with ``input_shape`` for the networks of ``SIZED``; its errors
are recorded). Per file:

- the op types in the graph;
- the reference (``lightning_edge.runtime.reference``) against ONNX Runtime on the same file over ``--inputs``
  random inputs: argmax agreement over axis 1 where ONNX Runtime predicts more than one class, else the largest
  difference relative to the largest output (agreement: within 5%); ONNX Runtime runs both as users run it (its
  fused integer kernels) and unfused (``ORT_DISABLE_ALL``: the file's QDQ arithmetic as written), and where
  the two disagree on some inputs, the agreement on the inputs where they agree is reported too;
- where a file misses the agreement: per ONNX Runtime session, the first stored tensor at which its codes part
  from ours, input by input (``lightning_edge.runtime.compare``);
- whether ``lightning_edge.runtime.compile`` accepts it (else its message); where it does, whether
  ``load(edge).run`` equals the reference bit for bit, and its speed against ONNX Runtime at batch 1
  (2 threads, alternating blocks, lightning_edge.runtime.benchmark.alternating).

One network failing never stops the others. Writes OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIMM = ["resnet18", "resnet50", "mobilenetv2_100", "mobilenetv3_small_100", "mobilenetv3_large_100", "efficientnet_b0",
        "efficientnet_lite0", "mnasnet_100", "ghostnet_100", "regnetx_002", "regnety_002", "densenet121", "repvgg_a0",
        "lcnet_050", "convnext_atto", "mobilevit_xxs"]
TORCHVISION = {
    "shufflenet_v2_x0_5": {"weights": None},
    "squeezenet1_1": {"weights": None},
    "googlenet": {"weights": None, "aux_logits": False, "init_weights": True},
    "lraspp_mobilenet_v3_large": {"weights": None, "weights_backbone": None},
}
MODELS = TIMM + list(TORCHVISION)
# Forwards that branch on their input's size (MobileViT resizes when H or W is not a multiple of its patch):
# prepare_qat refuses them without a size and traces them at the one given (QuantConfig.input_shape).
SIZED = ("mobilevit_xxs",)
SOURCES = ("fp32", "ort", "qat")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES,
                        help="fp32: the float file; ort: quantize_static QDQ; qat: our prepare_qat + to_onnx export")
    parser.add_argument("--size", type=int, default=160, help="input height and width")
    parser.add_argument("--inputs", type=int, default=64, help="random inputs for the agreement check")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds for the speed comparison")
    parser.add_argument("--out", default="outputs/bench/coverage")
    parser.add_argument("--speed-only", action="store_true",
                        help="only time again the files a previous run left in --out (e.g. on a quieter machine)")
    return parser.parse_args()


class _Outputs:
    """Wraps a network whose forward returns a dict (torchvision segmentation) into a tuple of its values."""

    def __new__(cls, model):
        import torch

        class TupleOutputs(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                out = self.inner(x)
                return tuple(out.values()) if isinstance(out, dict) else out

        return TupleOutputs(model)


def build_network(name: str, size: int):
    """The network with random weights, BatchNorm statistics from two random train-mode batches, in eval mode."""
    import torch

    torch.manual_seed(0)
    if name in TORCHVISION:
        import torchvision

        builder = getattr(torchvision.models, name, None) or getattr(torchvision.models.segmentation, name)
        model = _Outputs(builder(**TORCHVISION[name]))
    else:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=100)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, size, size))
    return model.eval()


def export_fp32(model, size: int, path: Path) -> str:
    import torch

    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, size, size))
    count = len(outputs) if isinstance(outputs, tuple) else 1
    names = ["logits"] if count == 1 else [f"output{i}" for i in range(count)]
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=names,
                      dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}})
    return str(path)


def build_files(name: str, args: argparse.Namespace, folder: Path) -> tuple[dict, dict]:
    """{source: path} for the sources that could be made, and {source: error message} for those that failed."""
    import torch

    from lightning_edge.runtime.benchmark import quantize_static_qdq

    folder.mkdir(parents=True, exist_ok=True)
    model = build_network(name, args.size)
    rng = np.random.default_rng(1)
    calibration = [rng.standard_normal((4, 3, args.size, args.size)).astype(np.float32) for _ in range(4)]
    paths, errors = {"fp32": export_fp32(model, args.size, folder / "fp32.onnx")}, {}
    if "ort" in args.sources:
        try:
            paths["ort"] = quantize_static_qdq(paths["fp32"], str(folder / "ort.onnx"), calibration)
        except Exception as error:  # noqa: BLE001  (a report, not a crash)
            errors["ort"] = f"{type(error).__name__}: {error}"
    if "qat" in args.sources:
        try:
            from lightning_edge.export import to_onnx
            from lightning_edge.quant import calibrate, prepare_qat

            config = {"input_shape": (3, args.size, args.size)} if name in SIZED else None
            prepared = prepare_qat(copy.deepcopy(model), config)
            calibrated = calibrate(prepared, [torch.from_numpy(batch) for batch in calibration], num_batches=len(calibration))
            paths["qat"] = to_onnx(calibrated, torch.zeros(1, 3, args.size, args.size), str(folder / "qat.onnx"))
        except Exception as error:  # noqa: BLE001
            errors["qat"] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    return {source: paths[source] for source in args.sources if source in paths}, errors


def op_types(path: str) -> list[str]:
    import onnx

    return sorted({node.op_type for node in onnx.load(path).graph.node})


def reference_agreement(path: str, x: np.ndarray, threads: int) -> tuple[dict, np.ndarray]:
    """The reference against ONNX Runtime on the first output; returns the record and the reference's outputs."""
    from lightning_edge.runtime.benchmark import onnxruntime_session
    from lightning_edge.runtime.reference import ReferenceModel

    started = time.perf_counter()
    reference = ReferenceModel(path)
    ours = np.concatenate([reference.run(x[i: i + 8])[0] for i in range(0, len(x), 8)])
    seconds = time.perf_counter() - started
    record = {"reference_s": round(seconds, 1)}
    for key, optimized in (("", True), ("unfused_", False)):  # ONNX Runtime as users run it, and as the file is written
        session = onnxruntime_session(path, threads, optimized=optimized)
        theirs = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i: i + 1]})[0] for i in range(len(x))])
        classes = int(len(np.unique(theirs.argmax(1))))
        record[f"{key}classes"] = classes
        record[f"{key}relative_difference"] = float(np.abs(ours - theirs).max() / max(float(np.abs(theirs).max()), 1e-12))
        if classes > 1:
            record[f"{key}argmax_agreement"] = float((ours.argmax(1) == theirs.argmax(1)).mean())
            record[f"{key}agrees"] = record[f"{key}argmax_agreement"] >= 0.99
        else:
            record[f"{key}agrees"] = record[f"{key}relative_difference"] <= 0.05
        if key == "":
            fused = theirs
        else:  # how far ONNX Runtime's fused kernels are from its own unfused run of the same file
            record["ort_self_agreement"] = float((fused.argmax(1) == theirs.argmax(1)).mean())
            # Where its two sessions disagree, an input has no one ONNX Runtime answer (its top logits are within a
            # rounding of each other); on the inputs where they agree, ours should give that answer.
            settled = fused.argmax(1) == theirs.argmax(1)
            if record["classes"] > 1 and settled.any():
                record["settled_inputs"] = int(settled.sum())
                record["settled_agreement"] = float((ours.argmax(1)[settled] == theirs.argmax(1)[settled]).mean())
    return record, ours


def runtime_check(path: str, folder: Path, source: str, x: np.ndarray, expected: np.ndarray | None,
                  args: argparse.Namespace) -> dict:
    """Compile; where it compiles, bit-exactness against the reference and speed against ONNX Runtime at batch 1."""
    from lightning_edge.runtime import compile, load

    edge = str(folder / f"{source}.edge")
    try:
        compile(path, edge, threads=args.threads)
    except Exception as error:  # noqa: BLE001  (CompileError and anything else: recorded)
        return {"compiles": False, "compile_error": f"{type(error).__name__}: {error}".splitlines()[0][:400]}
    from lightning_edge.runtime import available_kernels

    session = load(edge, threads=args.threads)
    record: dict = {"compiles": True, "kernels": session.kernels}
    if expected is not None:  # every kernel path this CPU has
        exact = {}
        for kernels in available_kernels():
            other = load(edge, threads=args.threads, kernels=kernels)
            got = np.concatenate([other.run(x[i: i + 8]) for i in range(0, len(x), 8)])
            exact[kernels] = bool(np.array_equal(got.reshape(expected.shape), expected))
        record["bit_exact_paths"] = exact
        record["bit_exact"] = all(exact.values())
    record.update(speed(path, session, x[:1], args))
    return record


def speed(path: str, session, one: np.ndarray, args: argparse.Namespace) -> dict:
    """Batch-1 latency of ours against ONNX Runtime on the same file, 2 threads, alternating blocks."""
    from lightning_edge.runtime.benchmark import alternating, median_ms, onnxruntime_session

    peer = onnxruntime_session(path, args.threads)
    name = peer.get_inputs()[0].name
    times = alternating({"ours": lambda: session.run(one), "ort": lambda: peer.run(None, {name: one})},
                        rounds=args.rounds, calls=8, discard=2)
    ms = {key: median_ms(value) for key, value in times.items()}
    p99 = {key: float(np.percentile(value, 99)) * 1e3 for key, value in times.items()}
    return {"ms": ms, "p99_ms": p99, "speedup_vs_ort": ms["ort"] / ms["ours"]}


def remeasure_speed(args: argparse.Namespace, out: Path) -> None:
    """--speed-only: time again the files an earlier run left in OUT (on a quieter machine), keeping the rest."""
    from lightning_edge.runtime import load

    if not (out / "results.json").is_file():
        raise SystemExit(f"--speed-only re-times the files of an earlier run, and {out / 'results.json'} is missing: "
                         f"run without --speed-only and --out {out} first")
    payload = json.loads((out / "results.json").read_text())
    for record in payload["results"]:
        if not record.get("compiles") or record["model"] not in args.models:
            continue
        folder = out / record["model"]
        session = load(str(folder / f"{record['source']}.edge"), threads=args.threads)
        one = np.random.default_rng(2).standard_normal((1, *session.input_shape)).astype(np.float32)
        record.update(speed(str(folder / f"{record['source']}.onnx"), session, one, args))
        print(f"{record['model']:26s} {record['source']:4s} ours {record['ms']['ours']:8.3f} ms  ORT "
              f"{record['ms']['ort']:8.3f} ms  x{record['speedup_vs_ort']:.2f}", flush=True)
    payload["speed_command"] = "python scripts/bench_coverage.py " + " ".join(sys.argv[1:])
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    (out / "results.md").write_text(_markdown(payload, args) + "\n")


def where_codes_part(edge: Path, path: str, x: np.ndarray, threads: int) -> dict:
    """For a file that misses the agreement: per ONNX Runtime session, on how many inputs any stored tensor's codes
    differ from ours, and the first tensors where they start to (lightning_edge.runtime.compare)."""
    from collections import Counter

    from lightning_edge.runtime.compare import first_differences

    found = {}
    for key, optimized in (("fused", True), ("unfused", False)):
        differences = [d for d in first_differences(str(edge), path, x, optimized=optimized, threads=threads) if d]
        first = Counter(d.tensor for d in differences).most_common(3)
        found[key] = {"inputs_with_a_difference": len(differences), "first_tensors": dict(first),
                      "largest_first_difference": max((d.differing for d in differences), default=0)}
    return found


def check_network(name: str, args: argparse.Namespace, out: Path) -> list[dict]:
    folder = out / name
    try:
        paths, errors = build_files(name, args, folder)
    except Exception as error:  # noqa: BLE001
        return [{"model": name, "source": "build", "error": f"{type(error).__name__}: {error}".splitlines()[0][:400]}]
    x = np.random.default_rng(2).standard_normal((args.inputs, 3, args.size, args.size)).astype(np.float32)
    results = [{"model": name, "source": source, "error": message} for source, message in errors.items()]
    for source, path in paths.items():
        record: dict = {"model": name, "source": source, "ops": op_types(path)}
        expected = None
        try:
            agreement, expected = reference_agreement(path, x, args.threads)
            record.update(agreement)
        except Exception as error:  # noqa: BLE001
            record["reference_error"] = f"{type(error).__name__}: {error}".splitlines()[0][:400]
            record["reference_trace"] = traceback.format_exc(limit=3)[-800:]
        if source != "fp32":
            try:
                record.update(runtime_check(path, folder, source, x, expected, args))
                if record.get("compiles") and not record.get("agrees", True):
                    record["first_differences"] = where_codes_part(folder / f"{source}.edge", path, x, args.threads)
            except Exception as error:  # noqa: BLE001
                record["runtime_error"] = f"{type(error).__name__}: {error}".splitlines()[0][:400]
        results.append(record)
    return results


def _reference_cell(r: dict) -> str:
    if "reference_error" in r:
        return "fails: " + r["reference_error"].replace("|", "/")[:160]
    cells = []
    for key, label in (("", "ORT"), ("unfused_", "ORT unfused")):
        if f"{key}agrees" not in r:
            continue
        verdict = "yes" if r[f"{key}agrees"] else "**no**"
        if f"{key}argmax_agreement" in r:
            cells.append(f"{label} {verdict}: argmax {100 * r[f'{key}argmax_agreement']:.1f}% ({r[f'{key}classes']} classes)")
        else:
            cells.append(f"{label} {verdict}: max diff {100 * r[f'{key}relative_difference']:.2f}% (1 class)")
    if r.get("ort_self_agreement", 1.0) < 1.0:
        cells.append(f"ORT fused vs unfused {100 * r['ort_self_agreement']:.1f}%")
        if "settled_agreement" in r:
            cells.append(f"on the {r['settled_inputs']} inputs where they agree: {100 * r['settled_agreement']:.1f}%")
    return "; ".join(cells)


def _runtime_cell(r: dict) -> str:
    if r["source"] == "fp32":
        return "n/a (float file)"
    if "runtime_error" in r:
        return "error: " + r["runtime_error"].replace("|", "/")[:160]
    if not r.get("compiles"):
        return "no: " + r.get("compile_error", "").replace("|", "/")[:200]
    exact = {True: "bit-exact", False: "**differs**", None: "not compared"}[r.get("bit_exact")]
    parts = "".join(f"; codes part from ORT {key} on {d['inputs_with_a_difference']} inputs, first at "
                    + ", ".join(f"{name.split('/')[-2]} ({count})" for name, count in d["first_tensors"].items())
                    for key, d in r.get("first_differences", {}).items() if d["inputs_with_a_difference"])
    return f"yes, {exact}, {r['ms']['ours']:.2f} ms vs ORT {r['ms']['ort']:.2f} ms (x{r['speedup_vs_ort']:.2f}){parts}"


def table(results: list[dict]) -> str:
    lines = ["| network | file | reference vs ORT | runtime compile, exactness, batch-1 speed | op types |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['source']} | not made: {r['error'].replace('|', '/')[:200]} | | |")
            continue
        lines.append(f"| {r['model']} | {r['source']} | {_reference_cell(r)} | {_runtime_cell(r)} | {' '.join(r['ops'])} |")
    return "\n".join(lines)


def _agreement_cell(r: dict, key: str) -> str:
    if f"{key}argmax_agreement" in r:
        return f"{100 * r[f'{key}argmax_agreement']:.1f}% ({r[f'{key}classes']} cl.)"
    if f"{key}relative_difference" in r:
        return f"1 class, logits within {100 * r[f'{key}relative_difference']:.1f}%"
    return ""


def summary_table(results: list[dict]) -> str:
    """The README's table: one row per quantized file, the verdicts and the speed."""
    lines = ["| network | QDQ from | compiles | bit-exact (" + ", ".join(_paths(results)) + ") | argmax vs ORT | "
             "vs ORT unfused | where ORT fused and unfused agree | ours ms | ORT ms | speed-up |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if r["source"] == "fp32":
            continue
        if "error" in r:
            lines.append(f"| {r['model']} | {r['source']} | not made: {r['error'].replace('|', '/')[:120]} | | | | | | | |")
            continue
        settled = (f"{100 * r['settled_agreement']:.1f}% of {r['settled_inputs']}" if "settled_agreement" in r
                   else "they agree on all" if r.get("ort_self_agreement") == 1.0 and "argmax_agreement" in r else "")
        compiled = r.get("compiles")
        exact = {True: "yes", False: "**no**", None: ""}[r.get("bit_exact")] if compiled else ""
        speed = (f"{r['ms']['ours']:.2f} | {r['ms']['ort']:.2f} | {r['speedup_vs_ort']:.2f}x" if "ms" in r else " | | ")
        lines.append(f"| {r['model']} | {r['source']} | {'yes' if compiled else '**no**'} | {exact} | "
                     f"{_agreement_cell(r, '')} | {_agreement_cell(r, 'unfused_')} | {settled} | {speed} |")
    return "\n".join(lines)


def _paths(results: list[dict]) -> list[str]:
    return next((list(r["bit_exact_paths"]) for r in results if "bit_exact_paths" in r), [])


def _markdown(payload: dict, args: argparse.Namespace) -> str:
    info = payload["machine"]
    flags = ", ".join(info["flags"]) or "none the kernels use"
    speed = f"; speed timed again by `{payload['speed_command']}`" if "speed_command" in payload else ""
    return (f"`{payload['command']}` ({payload['seconds']:.0f} s; {payload['size']}x{payload['size']}, "
            f"{payload['inputs']} inputs{speed})\n\n"
            f"Machine: {info['cpu']}, {info['cores']} cores, kernels {', '.join(info['kernels'])}; flags {flags}.\n\n"
            + summary_table(payload["results"]) + "\n\nIn detail:\n\n" + table(payload["results"]))


def main() -> None:
    args = parse_args()
    from lightning_edge.runtime import available_kernels
    from lightning_edge.runtime.benchmark import machine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"kernels {available_kernels()}, CPU flags {info['flags']}", flush=True)
    if args.speed_only:
        remeasure_speed(args, out)
        return
    results: list[dict] = []
    started = time.perf_counter()
    for name in args.models:
        begun = time.perf_counter()
        records = check_network(name, args, out)
        results += records
        summary = ", ".join(f"{r['source']}: " + ("not made" if "error" in r else
                            ("ref ok" if r.get("agrees") else "ref FAIL" if "agrees" in r else "ref error")
                            + ("" if r["source"] == "fp32" else ", compiles" if r.get("compiles") else ", no compile"))
                            for r in records)
        print(f"{name:26s} {time.perf_counter() - begun:6.0f} s  {summary}", flush=True)
        (out / "results.json").write_text(json.dumps({"machine": info, "results": results}, indent=2))
    command = "python scripts/bench_coverage.py " + " ".join(sys.argv[1:])
    payload = {"command": command.strip(), "machine": info, "size": args.size, "inputs": args.inputs, "results": results,
               "seconds": round(time.perf_counter() - started, 1)}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    markdown = _markdown(payload, args) + "\n"
    (out / "results.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
