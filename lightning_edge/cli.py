"""The ``lightning-edge`` command.

    lightning-edge models [PATTERN]          model names create_model accepts (ours first, then timm's)
    lightning-edge profile MODEL [...]       parameters, MACs and bytes of a model for an input size
    lightning-edge student MODEL --block G4  the Moonshine student of MODEL: what each layer becomes and costs
    lightning-edge qat-plan MODEL            what prepare_qat makes of MODEL: int8 layers and int8 tensors
    lightning-edge prune-plan MODEL --macs 0.4  channel groups of MODEL (what goes together) and the widths
                                             removing 40% of its MACs leaves
    lightning-edge export CKPT -o F.onnx     a train.py checkpoint as ONNX: QDQ after QAT, else FP32
    lightning-edge compile F.onnx -o F.edge  an ONNX QDQ file as the INT8 runtime's fused plan
    lightning-edge inspect F.edge            per layer: op, fused ONNX nodes, chosen kernel, MACs, bytes
    lightning-edge run F.edge --input x.npy  run a .edge file on a .npy batch (float32 NCHW)
    lightning-edge bench F.edge [--onnx F.onnx]  latency at batch 1 and 32, against ONNX Runtime if given
    lightning-edge compare F.edge F.onnx     per input, the first tensor whose codes differ from ONNX Runtime's
    lightning-edge train [OVERRIDES...]      the same as `python train.py OVERRIDES...`
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def _models(args: argparse.Namespace) -> int:
    from lightning_edge.models import list_models

    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0


def _profile(args: argparse.Namespace) -> int:
    from lightning_edge.models import create_model, macs_per_layer, profile_model

    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, image_size=args.image_size)
    shape = (args.in_chans, args.image_size, args.image_size)
    result = profile_model(model, shape).as_dict()
    if args.layers:
        result["macs_per_layer"] = macs_per_layer(model, shape)
    print(json.dumps(result, indent=2))
    return 0


def _student(args: argparse.Namespace) -> int:
    from lightning_edge.models import create_model, derive_student

    teacher = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, image_size=args.image_size)
    blocks = args.block if len(args.block) > 1 else args.block[0]
    _, report = derive_student(
        teacher, blocks, include=args.include, exclude=args.exclude, input_shape=(args.in_chans, args.image_size, args.image_size)
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report)
    return 0


def _qat_plan(args: argparse.Namespace) -> int:
    from lightning_edge.models import create_model
    from lightning_edge.quant import build_plan

    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, image_size=args.image_size)
    plan = build_plan(model, (args.in_chans, args.image_size, args.image_size) if args.sized else None)
    if args.json:
        print(json.dumps({"layers": [vars(fold) for fold in plan.folds], "tensors": [vars(point) for point in plan.points]}, indent=2))
        return 0
    print(f"{args.model}: {len(plan.folds)} int8 layers, {len(plan.points)} int8 tensors")
    for fold in plan.folds:
        folded = f" + BatchNorm {fold.bn_path}" if fold.bn_path else ""
        print(f"  layer  {fold.path:<28} {fold.kind}{folded}{' + ' + fold.activation if fold.activation else ''}")
    for point in plan.points:
        anchor = f"{point.where} of {point.anchor or 'the model'}"
        if point.where == "call":
            anchor = f"{point.call!r} call {point.call_index} in the forward of {point.anchor or 'the model'}"
        print(f"  tensor {point.name:<28} {point.description} ({anchor})")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from lightning_edge.export import network_from_checkpoint, to_onnx
    from lightning_edge.models import recorded_model_spec
    from lightning_edge.quant import is_prepared

    network = network_from_checkpoint(args.checkpoint)
    spec = recorded_model_spec(args.checkpoint) or {}
    size = args.image_size or spec.get("image_size")
    if not size:
        raise ValueError("the checkpoint does not record its input size; give --image-size")
    example = torch.zeros(1, int(spec.get("in_chans", 3)), int(size), int(size))
    path = to_onnx(network, example, args.output, opset=args.opset)
    kind = "QDQ (INT8)" if is_prepared(network) else "FP32"
    print(f"wrote {path}: {kind}, {os.path.getsize(path):,} bytes")
    return 0


def _train(overrides: list[str]) -> int:
    script = REPOSITORY_ROOT / "train.py"
    if not script.is_file():
        print(f"train.py not found at {script}: run from a clone of the repository (pip install -e .)", file=sys.stderr)
        return 2
    os.environ.setdefault("LIGHTNING_EDGE_ROOT", str(REPOSITORY_ROOT))
    sys.argv = [str(script), *overrides]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from lightning_edge.runtime import compile
    from lightning_edge.runtime.plan import ConvOp

    output = args.output or str(Path(args.onnx).with_suffix(".edge"))
    plan = compile(args.onnx, output, select=not args.no_select, tune_batch=args.tune_batch, threads=args.threads,
                   input_shape=args.input_shape, precision=args.precision)
    convs = [op for op in plan.ops if isinstance(op, ConvOp)]
    folded = sum(op.skip is not None for op in convs)
    print(f"{output}: {len(plan.ops)} ops ({len(convs)} conv/linear, {folded} with a folded residual add), "
          f"{os.path.getsize(output) / 1024:.1f} KiB")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from lightning_edge.runtime.report import layer_rows, layer_table
    from lightning_edge.runtime.edge_format import read_edge
    from lightning_edge.runtime.plan import Plan

    data, tensors = read_edge(args.edge)
    plan = Plan.from_dict(data)
    rows = layer_rows(plan, tensors)
    print(json.dumps({"plan": {k: v for k, v in data.items() if k not in ("ops", "tensors")}, "layers": rows}, indent=2)
          if args.json else layer_table(plan, rows))
    return 0


CPU_POLICIES = {"auto": None, "shared": True, "dedicated": False}  # --cpu-policy as load(shared_cpu=...)


def _session(args: argparse.Namespace):
    """The .edge file of ``run`` and ``bench`` loaded with their thread, kernel, pool and batch-group options."""
    from lightning_edge.runtime import load

    session = load(args.edge, threads=args.threads, kernels=args.kernels, shared_cpu=CPU_POLICIES[args.cpu_policy])
    if args.batch_group is not None:
        session.batch_group = args.batch_group
    return session


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    session = _session(args)
    x = np.load(args.input)
    outputs = session.run(x, as_dict=True)
    output = next(iter(outputs.values()))  # classes of the first output
    if args.output:  # one output: an .npy array; several: an .npz archive by output name
        np.save(args.output, output) if len(outputs) == 1 else np.savez(args.output, **outputs)
    if output.ndim == 2:
        print("\n".join(" ".join(map(str, row)) for row in np.argsort(-output, axis=1)[:, : args.top]))
    shapes = ", ".join(f"{name} {value.shape}" for name, value in outputs.items())
    print(f"{len(x)} inputs through {session} -> output {output.shape if len(outputs) == 1 else shapes}"
          + (f", saved to {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace) -> int:
    import numpy as np

    from lightning_edge.runtime import load
    from lightning_edge.runtime.compare import first_differences

    if args.input:
        x = np.load(args.input)
    else:
        x = np.random.default_rng(0).standard_normal((8, *load(args.edge, threads=1).input_shape)).astype(np.float32)
    session = "ONNX Runtime unfused" if args.unfused else "ONNX Runtime"
    found = first_differences(args.edge, args.onnx, x, optimized=not args.unfused)
    for index, difference in enumerate(found):
        if difference is None:
            print(f"input {index}: every stored tensor equals {session}'s")
        else:
            print(f"input {index}: codes part at {difference.tensor} (tensor {difference.compared} compared): "
                  f"{difference.differing} of {difference.size} codes differ, by at most {difference.largest}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import numpy as np

    from lightning_edge.runtime.benchmark import alternating, machine, median_ms, ratio

    session = _session(args)
    peer = None
    if args.onnx:
        from lightning_edge.runtime.benchmark import onnxruntime_session

        peer = onnxruntime_session(args.onnx, threads=session.threads)
        input_name = peer.get_inputs()[0].name
    print(f"{machine()['cpu']}, {session.threads} threads, kernels {session.kernels}")
    for batch in args.batch:
        x = np.random.default_rng(0).standard_normal((batch, *session.input_shape)).astype(np.float32)
        candidates = {"lightning-edge": lambda: session.run(x)}
        if peer is not None:
            candidates["onnxruntime"] = lambda: peer.run(None, {input_name: x})
        times = alternating(candidates, rounds=args.rounds)
        line = f"batch {batch:3d}: lightning-edge {median_ms(times['lightning-edge']):8.3f} ms"
        if peer is not None:
            line += (f"   onnxruntime {median_ms(times['onnxruntime']):8.3f} ms"
                     f"   speed-up {ratio(times, 'onnxruntime', 'lightning-edge'):.2f}x")
        print(line)
        if args.layers:
            seconds = session.profile(x)
            for op, took in zip(session.plan.ops, seconds):
                print(f"    {op.id:>6} {getattr(op, 'primitive', None) or op.kind:24s} {took * 1e6:9.1f} us")
    return 0


def _prune_plan(args: argparse.Namespace) -> int:
    import torch

    from lightning_edge.models import create_model
    from lightning_edge.prune import channel_groups, prune_channels

    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, image_size=args.image_size)
    example = torch.zeros(1, args.in_chans, args.image_size, args.image_size)
    groups = channel_groups(model, example)
    widths = {}
    if args.macs:
        result = prune_channels(model, example, args.macs, importance="l1", exclude=args.exclude, groups=groups)
        widths = result.widths
    rows = [{"group": group.name, "channels": group.channels, "kept": widths.get(group.name, (0, group.channels))[1],
             "blocks": group.blocks, "layers": group.paths(), "pinned": group.pinned} for group in groups]
    if args.json:
        print(json.dumps({"groups": rows, **({"macs_before": result.macs_before, "macs_after": result.macs_after}
                                             if args.macs else {})}, indent=2))
        return 0
    print(f"{args.model}: {len(groups)} channel groups, {sum(group.prunable for group in groups)} prunable")
    for row in rows:
        status = f"pinned: {row['pinned']}" if row["pinned"] else ("-" if row["kept"] == row["channels"] else "")
        width = f"{row['channels']:>5} -> {row['kept']:<5}" if args.macs else f"{row['channels']:>5}"
        blocks = f" ({row['blocks']} blocks)" if row["blocks"] > 1 else ""
        print(f"  {row['group']:<28} {width}{blocks} {len(row['layers']):>3} layers  {status}")
    if args.macs:
        print(f"MACs {result.macs_before:,} -> {result.macs_after:,} ({result.macs_removed:.1%} removed), "
              f"parameters {result.parameters_before:,} -> {result.parameters_after:,}")
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL and the data it is built for: input channels, image size, classes."""
    parser.add_argument("model")
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)


def build_parser() -> argparse.ArgumentParser:
    from lightning_edge.runtime.native import KERNELS

    parser = argparse.ArgumentParser(prog="lightning-edge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="list model names")
    models.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'cifar_*' or '*mobilenet*'")
    models.set_defaults(handler=_models)
    profile = commands.add_parser("profile", help="parameters, MACs and bytes of a model")
    _add_model_arguments(profile)
    profile.add_argument("--layers", action="store_true", help="also list MACs per layer")
    profile.set_defaults(handler=_profile)
    student = commands.add_parser("student", help="the Moonshine student of a model, layer by layer")
    _add_model_arguments(student)
    student.add_argument("--block", nargs="+", default=["G(4)"], help="G(g), DW, B(b), BG(b,g); several: one per residual block")
    student.add_argument("--include", nargs="*", help="glob patterns of further conv paths to replace")
    student.add_argument("--exclude", nargs="*", help="glob patterns of conv paths to keep standard")
    student.add_argument("--json", action="store_true", help="the report as JSON")
    student.set_defaults(handler=_student)
    qat_plan = commands.add_parser("qat-plan", help="the int8 layers and tensors prepare_qat finds in a model")
    _add_model_arguments(qat_plan)
    qat_plan.add_argument("--json", action="store_true")
    qat_plan.add_argument("--sized", action="store_true",
                          help="trace at --image-size (QuantConfig.input_shape): for forwards that branch on sizes")
    qat_plan.set_defaults(handler=_qat_plan)
    prune_plan = commands.add_parser("prune-plan", help="channel groups of a model and the widths a MAC target leaves")
    _add_model_arguments(prune_plan)
    prune_plan.add_argument("--macs", type=float, help="fraction of MACs to remove (filter L1 norms of fresh weights)")
    prune_plan.add_argument("--exclude", nargs="*", help="glob patterns of layers whose groups stay whole")
    prune_plan.add_argument("--json", action="store_true")
    prune_plan.set_defaults(handler=_prune_plan)
    export = commands.add_parser("export", help="a train.py checkpoint as ONNX (QDQ after QAT, else FP32)")
    export.add_argument("checkpoint")
    export.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    export.add_argument("--image-size", type=int, help="input side, when the checkpoint does not record it")
    export.add_argument("--opset", type=int, default=17)
    export.set_defaults(handler=_export)
    compile_ = commands.add_parser("compile", help="an ONNX QDQ file as the INT8 runtime's .edge plan")
    compile_.add_argument("onnx")
    compile_.add_argument("-o", "--output", help="the .edge file to write (default: beside the .onnx)")
    compile_.add_argument("--no-select", action="store_true", help="skip timing each layer's candidate kernels")
    compile_.add_argument("--tune-batch", type=int, default=1, help="batch size the kernel timings use")
    compile_.add_argument("--threads", type=int, help="threads the kernel timings use (default: all cores)")
    compile_.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                          help="the input's size, for a file exported with dynamic height and width")
    compile_.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                          help="arithmetic of the float convs: fp32, bf16 (vdpbf16ps on AVX512_BF16; INT8_SPEC rule 20) "
                               "or fp16 (half precision, NEON's on aarch64; rule 21)")
    compile_.set_defaults(handler=_compile)
    inspect = commands.add_parser("inspect", help="a .edge file layer by layer: op, fusion, kernel, MACs, bytes")
    inspect.add_argument("edge")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=_inspect)
    for name, handler, text in (("run", _run, "run a .edge file on a .npy batch"),
                                ("bench", _bench, "latency of a .edge file, against ONNX Runtime with --onnx")):
        command = commands.add_parser(name, help=text)
        command.add_argument("edge")
        command.add_argument("--threads", type=int, help="default: all cores")
        command.add_argument("--kernels", default="auto", choices=KERNELS)
        command.add_argument("--cpu-policy", default="auto", choices=list(CPU_POLICIES),
                             help="the thread pool on a CPU other busy processes share: switch when contention is "
                                  "seen (auto), always act as if it is shared (shared), never (dedicated)")
        command.add_argument("--batch-group", type=int, default=None,
                             help="samples per batch group (each run through the whole plan by one thread; 0: op "
                                  "by op); default 2")
        command.set_defaults(handler=handler)
        if name == "run":
            command.add_argument("--input", required=True, help=".npy file, float32 (batch, C, H, W)")
            command.add_argument("--output", help=".npy file for the float32 output")
            command.add_argument("--top", type=int, default=1, help="classes printed per input, best first")
        else:
            command.add_argument("--onnx", help="the QDQ file the .edge came from, to time ONNX Runtime on it")
            command.add_argument("--batch", type=int, nargs="+", default=[1, 32])
            command.add_argument("--rounds", type=int, default=8)
            command.add_argument("--layers", action="store_true", help="also time each op inside whole runs")
    compare = commands.add_parser("compare", help="the first tensor where a .edge file's codes part from ONNX Runtime's")
    compare.add_argument("edge")
    compare.add_argument("onnx", help="the QDQ file the .edge came from")
    compare.add_argument("--input", help=".npy file, float32 (batch, C, H, W); default: 8 random inputs")
    compare.add_argument("--unfused", action="store_true",
                         help="ONNX Runtime without graph optimizations (the file's QDQ arithmetic as written)")
    compare.set_defaults(handler=_compare)
    commands.add_parser("train", help="run train.py with Hydra overrides", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return _train(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, ImportError) as error:  # UnsupportedModelError, CompileError, EdgeFormatError too
        print(f"lightning-edge {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
