"""The INT8 runtime: compiled plans bit-exact to the numpy reference on every kernel path, and its errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from conftest import FASHION_MNIST_DIR, ROOT, calibrated_network, qat_resnet_on_fashion_mnist
from lightning_edge.export import to_onnx
from lightning_edge.models import create_model
from lightning_edge.runtime import CompileError, EdgeFormatError, available_kernels, compile, load
from lightning_edge.runtime.benchmark import onnxruntime_int8_is_exact, onnxruntime_session, quantize_static_qdq
from lightning_edge.runtime.native import default_threads
from lightning_edge.runtime.edge_format import read_edge, write_edge
from lightning_edge.runtime.packing import kernel_arrays
from lightning_edge.runtime.plan import Plan
from lightning_edge.runtime.reference import ReferenceModel

KERNELS = available_kernels()


def assert_bit_exact(onnx_path: str, edge_path: str, x: np.ndarray, shift: int = 0) -> dict[str, np.ndarray]:
    """Every uint8 tensor the plan stores and the output equal the reference's, on every kernel path here."""
    reference = ReferenceModel(onnx_path)
    expected = reference.run(x)[0]
    for kernels in KERNELS:
        output, tensors = load(edge_path, kernels=kernels).trace(x)
        compared = [name for name in tensors if name in reference.tensors]  # a max pool feeding a flatten has no Q node
        assert len(compared) >= len(tensors) - 1 > 0
        for name in compared:
            codes = tensors[name]
            want = reference.tensors[name].codes.astype(np.int64)
            got = codes.reshape(want.shape).astype(np.int64) - shift
            assert np.array_equal(got, want), f"{kernels}: tensor {name!r} differs in {(got != want).sum()} codes"
        assert np.array_equal(output, expected), kernels
    return tensors


def export_and_compile(network: nn.Module, tmp_path, name: str = "model") -> tuple[str, str, dict]:
    onnx_path = to_onnx(network, torch.zeros(1, 1, 28, 28), str(tmp_path / f"{name}.onnx"))
    edge_path = str(tmp_path / f"{name}.edge")
    return onnx_path, edge_path, compile(onnx_path, edge_path)


def primitives(plan: Plan) -> set[str]:
    return {getattr(op, "primitive", None) or op.kind for op in plan.ops}


def test_kernel_paths_of_this_machine():
    """Every path the CPU can run is built and offered, so the tests below check each of them."""
    assert "scalar" in KERNELS
    flags = open("/proc/cpuinfo").read().split() if sys.platform == "linux" else []
    if "avx2" in flags:
        assert "avx2" in KERNELS
    if {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= set(flags):
        assert "avx512" in KERNELS


FAMILIES = [
    ("cifar_resnet20", {}, {"gemm_b16", "average_pool"}),
    ("cifar_wrn_16_2", {}, {"depthwise"}),  # pre-activation: lone BatchNorms run as depthwise 1x1 convs
    ("cifar_resnet20", {"derive": {"block": "G4"}}, set()),  # grouped convs: per-group or block-diagonal, timed
    ("cifar_resnet20", {"derive": {"block": "DW"}}, {"depthwise"}),
    ("resnet18", {}, {"max_pool"}),
    ("mobilenetv2_100", {}, {"depthwise"}),  # ReLU6 clamps
]


@pytest.mark.parametrize("name,kwargs,expected", FAMILIES, ids=lambda value: str(value))
def test_each_family_is_bit_exact_to_the_reference_on_every_kernel_path(name, kwargs, expected, tmp_path):
    onnx_path, edge_path, plan = export_and_compile(calibrated_network(name, **kwargs), tmp_path)
    assert expected <= primitives(plan)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert_bit_exact(onnx_path, edge_path, x)


class _DepthwiseEdges(nn.Module):
    """Depthwise convs at the edges of the lane layouts: channel counts that fill no block (13), a block and a
    half of 16 (24), ragged 64-channel blocks (72, 100, 130), 3x3, 5x5 and 7x7 windows (odd tap counts leave a
    tap group part empty; 5x5 at strides 1 and 2 unrolled), windows of other widths than heights (3x5, 4x1: the columns layout's general loop),
    one taller than the columns layout holds (9x3: the row-major quads), strides 1 and 2 (also unequal), with
    and without padding (taps outside the image)."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 1
        for width, kernel, stride, padding in ((13, 3, 1, 1), (24, 5, 2, 2), (72, 3, 2, 0), (100, 7, 1, 3), (8, 3, 1, 1),
                                               (70, (3, 5), (1, 2), (1, 2)), (130, (4, 1), 1, (2, 0)), (16, 5, 1, 2),
                                               (40, (9, 3), 1, (4, 1))):
            layers += [nn.Conv2d(channels, width, 1), nn.ReLU(),
                       nn.Conv2d(width, width, kernel, stride, padding, groups=width), nn.ReLU6()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def test_depthwise_lane_layouts_at_ragged_channels_windows_and_borders(tmp_path):
    from lightning_edge.quant import calibrate

    torch.manual_seed(0)
    network = _DepthwiseEdges()
    network.train()
    network(torch.randn(16, 1, 28, 28))
    network = calibrate(network.eval(), [torch.randn(8, 1, 28, 28) for _ in range(2)], num_batches=2)
    onnx_path = to_onnx(network, torch.zeros(1, 1, 28, 28), str(tmp_path / "depthwise.onnx"))
    plan = compile(onnx_path, str(tmp_path / "depthwise.edge"), select=False)  # the depthwise kernel on every layer
    assert sum(op.kind == "depthwise" for op in plan.ops) == 9
    if "avx512" in KERNELS:  # windows up to 8 rows high run the columns layout (5 to 8: two quads a column), taller ones the row-major quads
        records = kernel_arrays(plan, load(str(tmp_path / "depthwise.edge")).tensors, "avx512")[0]
        assert [op["layout"] for op in records if op["kind"] == "depthwise"] == ["columns"] * 8 + ["quads"]
    assert_bit_exact(onnx_path, str(tmp_path / "depthwise.edge"), np.random.default_rng(4).standard_normal((3, 1, 28, 28)).astype(np.float32))


def test_residual_adds_fold_into_the_conv_epilogue(tmp_path):
    onnx_path, edge_path, plan = export_and_compile(calibrated_network(), tmp_path)
    folded = [op for op in plan.ops if op.kind == "conv" and op.skip is not None]
    assert len(folded) == 9 and not any(op.kind == "add" for op in plan.ops)
    assert all(any("Add" in node for node in op.nodes) for op in folded)
    names = {tensor.name for tensor in plan.tensors if tensor.folded}
    tensors = assert_bit_exact(onnx_path, edge_path, np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32))
    assert not names & set(tensors)  # a folded conv's own codes never reach memory


class _TwoBranches(nn.Module):
    """s = relu(a + b) folds b's conv; t = s + a cannot fold (s comes from a folded op, a is read twice): a plain add."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 7 * 7, 10)
        self.pool, self.relu = nn.MaxPool2d(4), nn.ReLU()

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        t = self.relu(a + b) + a
        return self.head(torch.flatten(self.pool(t), 1))  # a flatten of a spatial tensor: NCHW -> NHWC columns


def test_unfolded_adds_max_pool_and_spatial_flatten(tmp_path):
    from lightning_edge.quant import calibrate

    torch.manual_seed(0)
    network = calibrate(_TwoBranches().eval(), [torch.randn(8, 1, 28, 28) for _ in range(2)], num_batches=2)
    onnx_path, edge_path, plan = export_and_compile(network, tmp_path)
    assert {"add", "max_pool"} <= primitives(plan)
    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(np.float32)
    assert_bit_exact(onnx_path, edge_path, x)


def test_seven_bit_activations_fold_their_clip(tmp_path):
    network = calibrated_network(config={"activation_bits": 7})
    onnx_path, edge_path, plan = export_and_compile(network, tmp_path)
    grids = [getattr(op, "sum_grid", None) or getattr(op, "output_grid", None) or op.grid
             for op in plan.ops if op.kind != "dequantize"]
    assert all(grid.high <= 127 for grid in grids)
    assert_bit_exact(onnx_path, edge_path, np.random.default_rng(3).standard_normal((2, 1, 28, 28)).astype(np.float32))


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
@pytest.mark.parametrize("activations", ["QUInt8", "QInt8"])
def test_onnxruntime_quantize_static_files(per_channel, activations, tmp_path):
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10, in_chans=1).eval()
    float_path = to_onnx(model, torch.zeros(1, 1, 28, 28), str(tmp_path / "float.onnx"))
    rng = np.random.default_rng(0)
    onnx_path, edge_path = str(tmp_path / "ort.onnx"), str(tmp_path / "ort.edge")
    batches = [rng.standard_normal((1, 1, 28, 28)).astype(np.float32) for _ in range(4)]
    quantize_static_qdq(float_path, onnx_path, batches, per_channel=per_channel, activations=activations)
    compile(onnx_path, edge_path)
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert_bit_exact(onnx_path, edge_path, x, shift=128 if activations == "QInt8" else 0)


def test_any_batch_size_and_thread_count_give_the_same_numbers(tmp_path):
    _, edge_path, _ = export_and_compile(calibrated_network("mobilenetv2_100"), tmp_path)
    x = np.random.default_rng(4).standard_normal((13, 1, 28, 28)).astype(np.float32)
    one_thread = load(edge_path, threads=1).run(x)
    session = load(edge_path, threads=2)
    assert np.array_equal(session.run(x), one_thread)
    assert np.array_equal(np.concatenate([session.run(x[i:i + 1]) for i in range(13)]), one_thread)
    assert np.array_equal(session.run(x[0]), one_thread[:1])  # a single CHW image is a batch of one
    # More threads than cores (each op's chunks then go to whichever thread the OS runs), workers that
    # sleep at once between ops, and the shared-CPU policy: still the same numbers.
    for threads, spin, shared_cpu in ((7, None, False), (3, 0, None), (2, None, True), (7, None, None)):
        crowded = load(edge_path, threads=threads, spin=spin, shared_cpu=shared_cpu)
        assert crowded.threads == threads and crowded.shared_cpu == shared_cpu and (spin is None or crowded.spin == spin)
        for _ in range(3):
            assert np.array_equal(crowded.run(x), one_thread)


def test_batch_groups_give_the_same_numbers_as_op_by_op(tmp_path):
    """A batch cut into groups that each thread runs through the whole plan alone (any group size, a last group
    smaller than the others, more threads than cores) equals the batch run op by op on one thread."""
    _, edge_path, _ = export_and_compile(calibrated_network("mobilenetv2_100"), tmp_path)
    x = np.random.default_rng(6).standard_normal((7, 1, 28, 28)).astype(np.float32)
    want = load(edge_path, threads=1).run(x)
    for threads, group in ((2, 2), (2, 1), (2, 3), (3, 2), (2, 0)):
        session = load(edge_path, threads=threads)
        session.batch_group = group
        assert session.batch_group == group
        for _ in range(2):
            assert np.array_equal(session.run(x), want), (threads, group)
        assert np.array_equal(session.run(x[:3]), want[:3]), (threads, group)
    with pytest.raises(ValueError, match="batch_group=-1"):
        session.batch_group = -1


@pytest.mark.parametrize("name", ["mobilenetv2_100", "mnasnet_100"])
def test_fused_blocks_give_the_reference_numbers(name, tmp_path):
    """Inverted-residual blocks run fused, strip by strip of rows (MobileNetV2's expand, depthwise and projection
    with its residual add; MNASNet's first block has no expansion), give the reference's output on every kernel
    path, at batch 1 on one and two threads (rows shared between them) and in batch groups."""
    torch.manual_seed(0)
    network = create_model(name, num_classes=10, in_chans=1)
    network.train()
    with torch.no_grad():
        network(torch.randn(8, 1, 96, 96))
    from lightning_edge.quant import calibrate

    network = calibrate(network.eval(), [torch.randn(4, 1, 96, 96)], num_batches=1)
    onnx_path = to_onnx(network, torch.zeros(1, 1, 96, 96), str(tmp_path / "model.onnx"))
    edge_path = str(tmp_path / "model.edge")
    compile(onnx_path, edge_path)
    x = np.random.default_rng(8).standard_normal((5, 1, 96, 96)).astype(np.float32)
    want = ReferenceModel(onnx_path).run(x)[0]
    for kernels in KERNELS:
        for threads in (1, 2):
            session = load(edge_path, kernels=kernels, threads=threads)
            assert session.fusion
            if kernels != "avx512":  # the int16 pairs paths fuse; VNNI's u8 x s8 convs are not fused yet
                assert session.fused_blocks > 0, (kernels, threads)
            assert np.array_equal(session.run(x), want), (kernels, threads)  # batch groups on two threads
            assert np.array_equal(session.run(x[:1]), want[:1]), (kernels, threads)
            session.fusion = False
            assert np.array_equal(session.run(x[:1]), want[:1]), (kernels, threads, "unfused")
    with pytest.raises(ValueError, match="fusion=1"):
        session.fusion = 1


def test_thread_pool_policy_follows_contention(tmp_path):
    """shared_cpu=None (the default) turns the shared-CPU policy on when the pool sees contention: with seven
    threads on this machine's cores, workers are descheduled while they hold chunks. True keeps it on, False off."""
    _, edge_path, _ = export_and_compile(calibrated_network("mobilenetv2_100"), tmp_path)
    x = np.random.default_rng(5).standard_normal((8, 1, 28, 28)).astype(np.float32)
    sessions = {policy: load(edge_path, threads=7, shared_cpu=policy) for policy in (None, True, False)}
    seen = {policy: False for policy in sessions}
    for _ in range(40):
        for policy, session in sessions.items():
            session.run(x)
            seen[policy] |= session.cpu_contended
    assert seen == {None: True, True: True, False: False}
    assert [session.shared_cpu for session in sessions.values()] == [None, True, False]
    assert load(edge_path).shared_cpu is None
    with pytest.raises(TypeError, match="shared_cpu='yes'"):
        load(edge_path, shared_cpu="yes")


def test_session_errors_name_the_problem(tmp_path):
    _, edge_path, _ = export_and_compile(calibrated_network(), tmp_path)
    session = load(edge_path)
    with pytest.raises(ValueError, match=r"takes float32 \(batch, 1, 28, 28\)"):
        session.run(np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(ValueError, match="choose one of auto, avx512, avx2, neon, scalar"):
        load(edge_path, kernels="sse")
    with pytest.raises(ValueError, match="positive number of threads"):
        load(edge_path, threads=0)
    with pytest.raises(ValueError, match=r"spin=-1: give how many pause instructions"):
        load(edge_path, spin=-1)
    if "neon" not in KERNELS:
        with pytest.raises(ValueError, match="kernels='neon' needs"):
            load(edge_path, kernels="neon")


def test_unsupported_ops_fail_at_compile_naming_node_and_op(tmp_path):
    onnx_path = to_onnx(calibrated_network(), torch.zeros(1, 1, 28, 28), str(tmp_path / "model.onnx"))
    model = onnx.load(onnx_path)
    pool = next(node for node in model.graph.node if node.op_type == "GlobalAveragePool")
    pool.op_type = "GlobalMaxPool"
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(CompileError, match=rf"node '{pool.name}' \(GlobalMaxPool\): op GlobalMaxPool is not supported"):
        compile(str(tmp_path / "bad.onnx"), str(tmp_path / "bad.edge"))
    assert not (tmp_path / "bad.edge").exists()
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(CompileError, match="not a readable ONNX file"):
        compile(str(tmp_path / "junk.onnx"), str(tmp_path / "junk.edge"))


def test_a_float_model_compiles_and_runs_in_float32(tmp_path):
    """An unquantized export is a plain FP32 file: it runs in float32 (tests/test_runtime_fp32.py has the details)."""
    torch.manual_seed(0)
    float_path = to_onnx(create_model("cifar_resnet20", num_classes=10, in_chans=1).eval(), torch.zeros(1, 1, 28, 28),
                         str(tmp_path / "float.onnx"))
    plan = compile(float_path, str(tmp_path / "float.edge"), select=False)
    assert plan.ops[0].kind == "float_input" and plan.ops[-1].kind == "float_output"
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    onnx_runtime = onnxruntime_session(float_path, default_threads())
    want = onnx_runtime.run(None, {onnx_runtime.get_inputs()[0].name: x})[0]
    assert np.abs(load(str(tmp_path / "float.edge")).run(x) - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("damage", ["tensor size", "array length", "unknown kind", "read before write", "grid"])
def test_an_inconsistent_plan_is_refused_before_it_runs(damage, tmp_path):
    _, edge_path, _ = export_and_compile(calibrated_network(), tmp_path)
    plan, tensors = read_edge(edge_path)
    conv = next(op for op in plan["ops"] if op["kind"] == "conv")
    if damage == "tensor size":
        plan["tensors"][conv["output"]]["size"] += 1
    elif damage == "array length":
        tensors[conv["bias"]] = tensors[conv["bias"]][:-1].copy()
    elif damage == "unknown kind":
        conv["kind"] = "winograd9"
    elif damage == "read before write":
        plan["ops"][1], plan["ops"][2] = plan["ops"][2], plan["ops"][1]
    else:
        conv["output_grid"]["high"] = 300
    write_edge(tmp_path / "damaged.edge", plan, tensors)
    with pytest.raises(EdgeFormatError, match="plan is inconsistent"):
        load(tmp_path / "damaged.edge")


def test_the_runtime_loads_and_runs_without_torch(tmp_path):
    _, edge_path, _ = export_and_compile(calibrated_network(), tmp_path)
    expected = load(edge_path).run(np.ones((2, 1, 28, 28), np.float32))
    np.save(tmp_path / "expected.npy", expected)
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; import numpy as np; "
            "from lightning_edge.runtime import load; "
            f"out = load({edge_path!r}).run(np.ones((2, 1, 28, 28), np.float32)); "
            f"print(np.array_equal(out, np.load({str(tmp_path / 'expected.npy')!r})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_runtime_on_the_fashion_mnist_test_set(tmp_path):
    """A QAT-trained ResNet-20 on all 10,000 test images: bit-exact to the reference on every kernel path, and
    the same class as ONNX Runtime on at least 99.9% of them, where its int8 kernels are exact. On an x86 CPU
    without VNNI they saturate (onnxruntime_int8_is_exact): its unfused session stands in, which rounds float
    convs where we sum integers, so ties may part on a few images (99.85% measured on an AVX2-only EPYC,
    where its default session agreed on only 98.6%)."""
    network, data = qat_resnet_on_fashion_mnist()
    onnx_path, edge_path, _ = export_and_compile(network, tmp_path, "qat")
    exact = onnxruntime_int8_is_exact()
    reference, theirs = ReferenceModel(onnx_path), onnxruntime_session(onnx_path, default_threads(), optimized=exact)
    sessions = [load(edge_path, kernels=kernels) for kernels in KERNELS]
    agree = correct = total = 0
    for images, labels in data.test_dataloader():
        x = images.numpy()
        expected = reference.run(x)[0]
        outputs = [session.run(x) for session in sessions]
        assert all(np.array_equal(output, expected) for output in outputs)
        ours = outputs[0].argmax(1)
        agree += int((ours == theirs.run(None, {"input": x})[0].argmax(1)).sum())
        correct += int((ours == labels.numpy()).sum())
        total += len(x)
    assert total == 10_000 and agree / total >= (0.999 if exact else 0.995)
    assert correct / total > 0.6
