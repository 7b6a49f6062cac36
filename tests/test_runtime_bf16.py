"""compile(..., precision="bf16"): float convs run in bfloat16 by INT8_SPEC rule 20 (bf16 inputs and weights,
float32 accumulation in vdpbf16ps's order), bit for bit equal to ReferenceModel(precision="bf16") on every kernel
path this CPU has (vdpbf16ps where it has AVX512_BF16, the exact float32 form elsewhere), and close to float32."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_edge.runtime import available_kernels, compile, load
from lightning_edge.runtime.edge_format import read_edge
from lightning_edge.runtime.reference import ReferenceError, ReferenceModel, bf16_round

KERNELS = available_kernels()


def export(model: nn.Module, path, shape) -> np.ndarray:
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(*shape)
    torch.onnx.export(model, x, str(path), opset_version=17, dynamo=False)
    return x.numpy()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def bf16_exact(model: nn.Module, tmp_path, name: str, shape, precision: str = "bf16") -> tuple[list[dict], np.ndarray]:
    """``model`` exported, compiled in ``precision`` and run on every kernel path, each bit for bit the
    reference's; returns the plan's op records and the reference output."""
    x = export(model, tmp_path / f"{name}.onnx", shape)
    compile(tmp_path / f"{name}.onnx", tmp_path / f"{name}.edge", select=False, precision=precision)
    want = ReferenceModel(str(tmp_path / f"{name}.onnx"), precision=precision).run(x)[0]
    for kernels in KERNELS:
        assert same_bits(load(tmp_path / f"{name}.edge", kernels=kernels).run(x), want), kernels
    return read_edge(tmp_path / f"{name}.edge")[0]["ops"], want


def test_bf16_rounding_is_round_to_nearest_even_with_denormals_flushed():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(10000) * 10.0 ** rng.integers(-30, 30, 10000)).astype(np.float32)
    assert same_bits(bf16_round(x), torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    ties = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8], np.float32)  # halfway: to the even neighbour
    assert bf16_round(ties).tolist() == [1.0, 1 + 2 ** -6]
    tiny = np.array([1e-40, -1e-40], np.float32)
    assert same_bits(bf16_round(tiny), np.array([0.0, -0.0], np.float32))
    assert np.isnan(bf16_round(np.array([np.nan], np.float32))).all()


@pytest.mark.parametrize("geometry", [
    dict(i=3, o=8, k=3, s=2, p=1, g=1, d=1),    # strided stem (packed tiles)
    dict(i=8, o=8, k=3, s=1, p=2, g=4, d=2),    # grouped, dilated (wide tiles)
    dict(i=8, o=8, k=3, s=1, p=1, g=8, d=1),    # depthwise
    dict(i=16, o=24, k=1, s=1, p=0, g=1, d=1),  # pointwise
    dict(i=5, o=13, k=5, s=2, p=2, g=1, d=1),   # odd channel count, ragged row block
    dict(i=32, o=17, k=1, s=2, p=0, g=1, d=1),  # strided pointwise
    dict(i=8, o=8, k=3, s=2, p=1, g=8, d=1, size=(37, 41)),  # depthwise, strided, rows past 16 lanes
    dict(i=4, o=8, k=5, s=1, p=2, g=4, d=1, size=(9, 35)),   # depthwise with a channel multiplier of 2
    dict(i=6, o=6, k=3, s=3, p=1, g=6, d=2, size=(20, 50)),  # depthwise, stride 3, dilated
    dict(i=16, o=24, k=3, s=1, p=1, g=2, d=1, size=(5, 5)),  # a map smaller than a tile: tiles span the batch
    # Depthwise rows of 49 to 64 outputs, four vectors with the last one partial (MobileNetV2's 112 -> 56
    # stride-2 layer): an AVX-512 row loop once skipped them.
    dict(i=4, o=4, k=3, s=2, p=1, g=4, d=1, size=(6, 112)),
    dict(i=4, o=4, k=3, s=1, p=1, g=4, d=1, size=(3, 61)),
    # Strided dense convs run as stride-1 ones over their input's phases: stride 3 with dilation 2, unequal strides.
    dict(i=4, o=6, k=3, s=3, p=2, g=2, d=2, size=(17, 20)),
    dict(i=6, o=10, k=3, s=(2, 1), p=1, g=1, d=1, size=(11, 9)),
    dict(i=6, o=8, k=2, s=(1, 3), p=0, g=1, d=1, size=(9, 23)),
    dict(i=4, o=4, k=3, s=1, p=1, g=4, d=1, size=(3, 300)),  # depthwise rows of more than 8 vectors
    dict(i=4, o=4, k=5, s=2, p=2, g=4, d=1, size=(7, 290)),
])
def test_bf16_conv_matches_the_reference_bit_for_bit(tmp_path, geometry):
    g = geometry
    conv = nn.Conv2d(g["i"], g["o"], g["k"], stride=g["s"], padding=g["p"], groups=g["g"], dilation=g["d"])
    ops, _ = bf16_exact(conv, tmp_path, "conv", (3, g["i"], *g.get("size", (13, 11))))
    assert [op["kind"] for op in ops] == ["float_input", "bf16_conv", "float_output"]


class Block(nn.Module):
    """A residual block with ReLU6 and a depthwise conv, ending in a conv: every value the reference and the
    runtime compute is a bf16 conv or a one-step float32 elementwise op, so the whole output is bit-exact.
    The residual add and ReLU fuse into the conv before them; ``shared`` keeps one sum unfused (read twice)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.expand = nn.Conv2d(16, 32, 1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.project = nn.Conv2d(32, 16, 1)
        self.head = nn.Conv2d(16, 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = nn.functional.relu6(self.depthwise(nn.functional.relu6(self.expand(x))))
        return self.head(torch.relu(self.project(y) + x))


@pytest.mark.parametrize("side", [24, 8])  # 8: every map is smaller than a tile (batch-spanning tiles)
def test_bf16_block_is_bit_exact_and_fuses_its_activations_and_residual_add(tmp_path, side):
    ops, _ = bf16_exact(Block(), tmp_path, "block", (4, 3, side, side))
    convs = [op for op in ops if op["kind"] == "bf16_conv"]
    assert [(op.get("low"), op.get("high")) for op in convs] == [(0.0, None), (0.0, 6.0), (0.0, 6.0), (0.0, None), (None, None)]
    assert [op.get("skip") is not None for op in convs] == [False, False, False, True, False]  # project + x, then ReLU
    assert not any(op["kind"] == "float_expression" for op in ops)


def test_bf16_results_only_bf16_convs_read_are_stored_as_bfloat16(tmp_path):
    """The expand and depthwise results (read only as the next conv's input) and the block's sum (read only by the
    head) are stored as bfloat16 bits; the stem's (also the residual add's skip) and the head's (the output) stay
    float32. A trace shows the stored values widened, equal to the reference's bf16 rounding of them."""
    block = Block()
    x = export(block, tmp_path / "block.onnx", (2, 3, 16, 16))
    compile(tmp_path / "block.onnx", tmp_path / "block.edge", select=False, precision="bf16")
    plan = read_edge(tmp_path / "block.edge")[0]
    convs = [op for op in plan["ops"] if op["kind"] == "bf16_conv"]
    assert [plan["tensors"][op["output"]]["dtype"] for op in convs] == ["f32", "bf16", "bf16", "bf16", "f32"]
    session = load(tmp_path / "block.edge")
    _, tensors = session.trace(x)
    stem = tensors[plan["tensors"][convs[0]["output"]]["name"]]
    expanded = tensors[plan["tensors"][convs[1]["output"]]["name"]]
    assert expanded.dtype == np.float32 and expanded.shape == (2, 1, 32, 8, 8)
    assert same_bits(bf16_round(expanded), expanded) and stem.shape == (2, 1, 16, 8, 8)
    # The widened channel pairs are the reference's values of that tensor, channel for channel.
    head = nn.Sequential(block.stem, nn.ReLU(), block.expand, nn.ReLU6())
    export(head, tmp_path / "head.onnx", (2, 3, 16, 16))
    want = ReferenceModel(str(tmp_path / "head.onnx"), precision="bf16").run(x)[0]
    assert same_bits(expanded.reshape(want.shape), bf16_round(want))


class StridedChain(nn.Module):
    """A strided dense conv, a strided 5x5 depthwise one and a strided pointwise one, each reading a tensor stored
    as bfloat16 channel pairs; the first result has an odd channel count, so it stays float32."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 7, 3, padding=1), nn.Conv2d(7, 10, 3, stride=2, padding=1),
                                    nn.Conv2d(10, 10, 5, stride=2, padding=2, groups=10), nn.Conv2d(10, 12, 1, stride=2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs[:-1]:
            x = torch.relu(conv(x))
        return self.convs[-1](x)


def test_bf16_convs_reading_bfloat16_tensors_are_bit_exact(tmp_path):
    ops, _ = bf16_exact(StridedChain(), tmp_path, "chain", (3, 3, 37, 45))
    plan = read_edge(tmp_path / "chain.edge")[0]
    convs = [op for op in ops if op["kind"] == "bf16_conv"]
    assert [plan["tensors"][op["output"]]["dtype"] for op in convs] == ["f32", "bf16", "bf16", "f32"]


class DepthwiseOfPairs(nn.Module):
    """A depthwise conv reading channel pairs (an expand conv's result), plus a float32 residual and a ReLU, its
    result an output (float32) or the input of a 1x1 conv (channel pairs again)."""

    def __init__(self, kernel: int, stride, padding: int, then_pointwise: bool):
        super().__init__()
        self.expand, self.side = nn.Conv2d(3, 12, 1), nn.Conv2d(3, 12, kernel, stride=stride, padding=padding)
        self.depthwise = nn.Conv2d(12, 12, kernel, stride=stride, padding=padding, groups=12)
        self.pointwise = nn.Conv2d(12, 4, 1) if then_pointwise else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(torch.relu(self.depthwise(self.expand(x)) + self.side(x)))


@pytest.mark.parametrize("kernel, stride, padding, size", [(3, 1, 1, (37, 45)), (3, 2, 1, (37, 45)), (5, 2, 2, (20, 33)),
                                                           (5, 1, 2, (23, 35)), (7, 1, 3, (9, 18)), (3, (2, 1), 0, (11, 40)),
                                                           (5, (1, 2), 1, (16, 17))])
@pytest.mark.parametrize("then_pointwise", [False, True])
def test_bf16_depthwise_conv_of_channel_pairs_is_bit_exact(tmp_path, kernel, stride, padding, size, then_pointwise):
    model = DepthwiseOfPairs(kernel, stride, padding, then_pointwise)
    ops, _ = bf16_exact(model, tmp_path, "depthwise", (2, 3, *size))
    plan = read_edge(tmp_path / "depthwise.edge")[0]
    depthwise = next(op for op in ops if op["kind"] == "bf16_conv" and op["groups"] == 12)
    assert depthwise["skip"] is not None and plan["tensors"][depthwise["input"]]["dtype"] == "bf16"
    assert plan["tensors"][depthwise["output"]]["dtype"] == ("bf16" if then_pointwise else "f32")


class Pointwise(nn.Module):
    """A 1x1 conv reading channel pairs in place (no conversion), on maps larger and smaller than a GEMM tile,
    after a grouped conv whose groups hold an even channel count (its result can be channel pairs too)."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(3, 12, 3, padding=1)
        self.split = nn.Conv2d(12, 20, 3, padding=1, groups=2)
        self.pointwise = nn.Conv2d(20, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(torch.relu(self.split(torch.relu(self.grouped(x)))))


# 7x7 and 14x14: a plane's last tile is a long one (49 and 196 pixels; 63 wide pixels with dropped columns).
@pytest.mark.parametrize("shape", [(2, 3, 13, 11), (3, 3, 5, 4), (2, 3, 7, 7), (1, 3, 14, 14)])
def test_bf16_pointwise_conv_reads_channel_pairs_in_place(tmp_path, shape):
    ops, _ = bf16_exact(Pointwise(), tmp_path, "pointwise", shape)
    plan = read_edge(tmp_path / "pointwise.edge")[0]
    convs = [op for op in ops if op["kind"] == "bf16_conv"]
    assert [plan["tensors"][op["output"]]["dtype"] for op in convs] == ["bf16", "bf16", "f32"]


def test_bf16_channel_pairs_of_an_odd_channel_count_are_refused(tmp_path):
    """A plan that stores an odd channel count as bfloat16 channel pairs (a pair would be half missing) stops at
    load, naming the tensor."""
    from lightning_edge.runtime.edge_format import EdgeFormatError, write_edge

    export(nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 3)), tmp_path / "odd.onnx", (1, 3, 9, 9))
    compile(tmp_path / "odd.onnx", tmp_path / "odd.edge", select=False, precision="bf16")
    plan, arrays = read_edge(tmp_path / "odd.edge")
    first = next(op for op in plan["ops"] if op["kind"] == "bf16_conv")
    assert plan["tensors"][first["output"]]["dtype"] == "f32"
    plan["tensors"][first["output"]]["dtype"] = "bf16"
    write_edge(tmp_path / "bad.edge", plan, arrays)
    with pytest.raises(EdgeFormatError, match="stored as bfloat16 channel pairs, but its channels"):
        load(tmp_path / "bad.edge")


class Classifier(nn.Module):
    """A conv, global pooling and two Linear layers (Gemm): each Gemm runs as a bf16_conv on a 1x1 map, its rows
    split into chunks across threads (the first has 203 outputs of 301 features: more than one chunk, the last
    one ragged)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 301, 3)
        self.hidden, self.head = nn.Linear(301, 203), nn.Linear(203, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1)
        return self.head(torch.relu(self.hidden(features)))


@pytest.mark.parametrize("batch", [1, 5])
def test_bf16_gemm_is_a_bit_exact_bf16_conv(tmp_path, batch):
    ops, _ = bf16_exact(Classifier(), tmp_path, "classifier", (batch, 3, 6, 6))
    convs = [op for op in ops if op["kind"] == "bf16_conv"]
    assert [(op["in_c"], op["out_c"], op["out_h"], op.get("low")) for op in convs[1:]] == [(301, 203, 1, 0.0), (203, 10, 1, None)]
    assert not any(op["kind"] in ("float_matmul", "float_expression") for op in ops)


def test_a_bfloat16_tensor_read_by_another_op_is_refused(tmp_path):
    """bfloat16 bits are a bf16_conv's input only: a plan whose float op (or skip) reads one stops at load."""
    from lightning_edge.runtime.edge_format import EdgeFormatError, write_edge

    export(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), tmp_path / "two.onnx", (1, 3, 9, 9))
    compile(tmp_path / "two.onnx", tmp_path / "two.edge", select=False, precision="bf16")
    plan, arrays = read_edge(tmp_path / "two.edge")
    first = next(op for op in plan["ops"] if op["kind"] == "bf16_conv")
    assert plan["tensors"][first["output"]]["dtype"] == "bf16"
    output = next(op for op in plan["ops"] if op["kind"] == "float_output")
    output["input"] = first["output"]
    write_edge(tmp_path / "bad.edge", plan, arrays)
    with pytest.raises(EdgeFormatError, match="float_output.*stored as bfloat16: only a bf16_conv's input may be"):
        load(tmp_path / "bad.edge")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_network_stays_close_to_float32(tmp_path, precision):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    x = export(model, tmp_path / "net.onnx", (4, 3, 64, 64) if precision == "bf16" else (2, 3, 32, 32))
    compile(tmp_path / "net.onnx", tmp_path / "net.edge", select=False, precision=precision)
    got = load(tmp_path / "net.edge").run(x)
    want = model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_unknown_precision_is_refused(tmp_path):
    export(nn.Conv2d(3, 4, 3), tmp_path / "conv.onnx", (1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown precision 'int4'; use one of fp32, bf16, fp16"):
        compile(tmp_path / "conv.onnx", tmp_path / "conv.edge", precision="int4")
    with pytest.raises(ReferenceError, match="unknown precision"):
        ReferenceModel(str(tmp_path / "conv.onnx"), precision="int4")


class SharedSum(nn.Module):
    """A conv + residual sum that two ops read: the add cannot be fused and runs as its own float op."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) + x
        return torch.relu(y) * y


def test_bf16_sum_read_twice_is_not_fused(tmp_path):
    ops, _ = bf16_exact(SharedSum(), tmp_path, "shared", (2, 4, 9, 9))
    conv = next(op for op in ops if op["kind"] == "bf16_conv")
    assert conv.get("skip") is None and conv.get("low") is None


def test_damaged_bf16_conv_is_refused(tmp_path):
    """A bf16_conv record whose clamp is inverted or whose weights are the wrong length stops at load, by name."""
    from lightning_edge.runtime.edge_format import EdgeFormatError, write_edge

    export(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6()), tmp_path / "conv.onnx", (1, 3, 8, 8))
    compile(tmp_path / "conv.onnx", tmp_path / "conv.edge", select=False, precision="bf16")
    plan, arrays = read_edge(tmp_path / "conv.edge")
    conv = next(op for op in plan["ops"] if op["kind"] == "bf16_conv")
    assert (conv["low"], conv["high"]) == (0.0, 6.0)
    conv["low"], conv["high"] = 6.0, 0.0
    write_edge(tmp_path / "inverted.edge", plan, arrays)
    with pytest.raises(EdgeFormatError, match="low bound 6.0 is above its high bound 0.0"):
        load(tmp_path / "inverted.edge")
    conv["low"], conv["high"] = 0.0, 6.0
    arrays[conv["weights"]] = arrays[conv["weights"]][:-1]
    write_edge(tmp_path / "short.edge", plan, arrays)
    with pytest.raises(Exception, match="weights"):
        load(tmp_path / "short.edge")


class Downsample(nn.Module):
    """A strided block with ResNet's option-A shortcut (subsample, pad channels): the shortcut is computed only
    when the Add is, after the conv, so the conv moves after it to take the add into its epilogue."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + shortcut)


def test_bf16_conv_moves_after_a_late_shortcut_to_fuse_it(tmp_path):
    ops, _ = bf16_exact(Downsample(), tmp_path, "down", (2, 4, 12, 12))
    assert not any(op["kind"] == "float_expression" for op in ops)
    assert [op.get("skip") is not None for op in ops if op["kind"] == "bf16_conv"] == [False, True]


class InvertedClip(nn.Module):
    """A conv clamped to an empty range (ONNX Clip with min > max makes every value max): not a clamp the conv's
    epilogue can take, so it stays its own float op and the file still loads."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.conv(x), min=1.0, max=-1.0)


def test_bf16_inverted_clip_is_not_fused(tmp_path):
    ops, want = bf16_exact(InvertedClip(), tmp_path, "clip", (1, 3, 8, 8))
    conv = next(op for op in ops if op["kind"] == "bf16_conv")
    assert conv.get("low") is None and conv.get("high") is None
    assert np.all(want == -1.0)
