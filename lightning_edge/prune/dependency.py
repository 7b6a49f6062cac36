"""Channel dependency groups: which channels of which layers must be removed together, found by tracing.

The network is traced with torch.fx and its shapes propagated on an example input. Every tensor's channel
dimension (dim 1) belongs to a *channel space*; a convolution or linear layer starts a new space for its
output, while BatchNorm, activations, pooling and dropout carry their input's space through. Coupling merges
spaces (union-find):

- the inputs of an elementwise add or multiply (a residual add, a gate) share one space;
- a depthwise convolution's output is its input space (channel c in, channel c out);
- a grouped convolution keeps its groups equal: its input and output spaces drop the same number of
  channels from each group (``ChannelGroup.blocks``);
- a BatchNorm and the next layer's input follow the space they sit on.

A space is prunable when a convolution or linear layer produces it and nothing pins it: the network's input
and output, a concatenation, a reshape that mixes channels with pixels, or any operation this tracer does not
know pin the spaces they touch, so a model with unknown layers is pruned conservatively rather than broken.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass
class ChannelGroup:
    """Channels of several layers that are removed together; removing channel c removes it everywhere here.

    Attributes:
        channels: the width of the space.
        producers: (path, conv or linear) whose output channels (weight dim 0, bias) are this space.
        depthwise: (path, depthwise conv) whose input and output channels are both this space.
        norms: (path, BatchNorm) normalising this space.
        consumers: (path, conv or linear) whose input channels (weight dim 1) are this space.
        blocks: the space splits into this many equal contiguous blocks (a grouped conv's groups); the same
            number of channels must go from each.
        pinned: why the space cannot be pruned, or None when it can.
    """

    channels: int
    producers: list[tuple[str, nn.Module]] = field(default_factory=list)
    depthwise: list[tuple[str, nn.Conv2d]] = field(default_factory=list)
    norms: list[tuple[str, _BatchNorm]] = field(default_factory=list)
    consumers: list[tuple[str, nn.Module]] = field(default_factory=list)
    blocks: int = 1
    pinned: str | None = None

    @property
    def name(self) -> str:
        """The first producer's path: how reports name the group."""
        return self.producers[0][0] if self.producers else "<input>"

    @property
    def prunable(self) -> bool:
        return self.pinned is None and bool(self.producers)

    def paths(self) -> list[str]:
        """Every layer of the group, producers first."""
        return [path for members in (self.producers, self.depthwise, self.norms, self.consumers) for path, _ in members]


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with every conv, linear and BatchNorm (timm's subclasses too) kept as one leaf."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (nn.Conv2d, nn.Linear, _BatchNorm)) or super().is_leaf_module(module, qualified_name)


_SAME_CHANNELS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid,
    nn.Tanh, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_SAME_CHANNELS_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.hardtanh, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.elu, F.mish,
    torch.relu, torch.sigmoid, torch.tanh, F.dropout, F.dropout2d, F.max_pool2d, F.avg_pool2d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.clamp, operator.neg, torch.neg,
}
_SAME_CHANNELS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_", "contiguous", "clone", "detach", "neg",
                          "float", "to", "type_as"}
_ELEMENTWISE = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.truediv,
                torch.add, torch.mul, torch.sub}
_ELEMENTWISE_METHODS = {"add", "add_", "mul", "mul_", "sub", "div"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax}
_REDUCTION_METHODS = {"mean", "sum", "amax"}
_FLATTENS = {torch.flatten}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_SHAPE_METHODS = {"size", "dim"}
_KNOWN_FUNCTIONS = _SAME_CHANNELS_FUNCTIONS | _REDUCTIONS | _FLATTENS  # ops whose channels this tracer follows
_KNOWN_METHODS = _SAME_CHANNELS_METHODS | _REDUCTION_METHODS | _FLATTEN_METHODS


class _Spaces:
    """Union-find over channel spaces, each with its group record."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.groups: list[ChannelGroup] = []

    def new(self, channels: int, pinned: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.groups.append(ChannelGroup(channels, pinned=pinned))
        return len(self.parent) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def group(self, space: int) -> ChannelGroup:
        return self.groups[self.find(space)]

    def pin(self, space: int | None, reason: str) -> None:
        if space is not None and self.group(space).pinned is None:
            self.group(space).pinned = reason

    def union(self, a: int, b: int, reason: str) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        first, second = self.groups[a], self.groups[b]
        if first.channels != second.channels:  # broadcasting (e.g. a one-channel gate): nothing maps one to one
            self.pin(a, reason)
            self.pin(b, reason)
            return a
        self.parent[b] = a
        first.producers += second.producers
        first.depthwise += second.depthwise
        first.norms += second.norms
        first.consumers += second.consumers
        first.blocks = math.lcm(first.blocks, second.blocks)
        first.pinned = first.pinned or second.pinned
        return a

    def roots(self) -> list[ChannelGroup]:
        return [self.groups[index] for index in range(len(self.parent)) if self.find(index) == index]


def trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """``model`` traced with convs, linears and BatchNorms as leaves, shapes propagated from ``example_input``."""
    try:
        graph = _Tracer().trace(model)
    except Exception as error:  # torch.fx raises many kinds on data-dependent control flow
        raise ValueError(
            f"channel pruning traces the network with torch.fx, and {type(model).__name__} cannot be traced "
            f"({type(error).__name__}: {error}). Make its forward free of data-dependent Python control flow, or "
            "prune a traceable part of it (network=PATH)"
        ) from error
    module = fx.GraphModule(model, graph)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(module).propagate(example_input)
    finally:
        model.train(was_training)
    return module


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """Every channel space of ``model`` as a :class:`ChannelGroup`, in the order the network produces them.

    ``example_input`` is one batch (N, C, H, W) of the input the network sees; only shapes matter.
    """
    graph_module = trace(model, example_input)
    spaces = _Spaces()
    space_of: dict[fx.Node, int | None] = {}

    def shape(node) -> torch.Size | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return getattr(meta, "shape", None)

    def tensor_inputs(node: fx.Node) -> list[fx.Node]:
        return [arg for arg in node.all_input_nodes if space_of.get(arg) is not None]

    def opaque(node: fx.Node, reason: str) -> int | None:
        for arg in tensor_inputs(node):
            spaces.pin(space_of[arg], reason)
        node_shape = shape(node)
        return spaces.new(node_shape[1], pinned=reason) if node_shape is not None and len(node_shape) >= 2 else None

    for node in graph_module.graph.nodes:
        node_shape = shape(node)
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        incoming = space_of.get(first) if first is not None else None
        if node.op == "placeholder":
            space_of[node] = spaces.new(node_shape[1], pinned="the network's input") if node_shape is not None else None
        elif node.op == "output":
            for arg in node.all_input_nodes:
                spaces.pin(space_of.get(arg), "the network's output")
        elif node.op == "get_attr":
            space_of[node] = None
        elif node.op == "call_module":
            module = model.get_submodule(node.target)
            space_of[node] = _module_space(spaces, node.target, module, incoming, shape(first), node_shape, opaque, node)
        elif node.op in ("call_function", "call_method"):
            space_of[node] = _function_space(spaces, node, incoming, shape(first), node_shape, space_of, opaque)
        else:
            space_of[node] = opaque(node, f"{node.op} {node.target}")
    order = {path: index for index, (path, _) in enumerate(model.named_modules())}
    groups = spaces.roots()
    for group in groups:  # members in module order: a group is named by its first producer
        for members in (group.producers, group.depthwise, group.norms, group.consumers):
            members.sort(key=lambda member: order[member[0]])
    # In the order the network produces them: the input first, then by each group's first producer.
    groups.sort(key=lambda group: (bool(group.producers), order[group.paths()[0]] if group.paths() else -1))
    return groups


def _module_space(spaces: _Spaces, path: str, module: nn.Module, incoming: int | None, in_shape, out_shape, opaque,
                  node: fx.Node) -> int | None:
    if incoming is None:
        return opaque(node, f"{path} ({type(module).__name__}) on an untracked input")
    if isinstance(module, nn.Conv2d):
        groups = module.groups
        if groups == module.in_channels == module.out_channels:  # depthwise: channel c in is channel c out
            spaces.group(incoming).depthwise.append((path, module))
            return incoming
        spaces.group(incoming).consumers.append((path, module))
        produced = spaces.new(module.out_channels)
        spaces.group(produced).producers.append((path, module))
        if groups > 1:
            spaces.group(incoming).blocks = math.lcm(spaces.group(incoming).blocks, groups)
            spaces.group(produced).blocks = groups
        return produced
    if isinstance(module, nn.Linear):
        if in_shape is None or len(in_shape) != 2:  # a Linear on (N, C, H, W) mixes the last dim, not channels
            return opaque(node, f"{path} (Linear on a {len(in_shape or ())}-d tensor)")
        spaces.group(incoming).consumers.append((path, module))
        produced = spaces.new(module.out_features)
        spaces.group(produced).producers.append((path, module))
        return produced
    if isinstance(module, _BatchNorm):
        spaces.group(incoming).norms.append((path, module))
        return incoming
    if isinstance(module, _SAME_CHANNELS_MODULES):
        return incoming
    if isinstance(module, nn.Flatten):
        return incoming if _keeps_channels(in_shape, out_shape) else opaque(node, f"{path} (Flatten of a spatial map)")
    return opaque(node, f"{path} ({type(module).__name__}, unknown to channel pruning)")


def _function_space(spaces: _Spaces, node: fx.Node, incoming: int | None, in_shape, out_shape, space_of, opaque) -> int | None:
    target = node.target
    is_method = node.op == "call_method"
    if is_method and target in _SHAPE_METHODS or target in (getattr, len):
        return None
    if out_shape is None or len(out_shape) < 2:
        return opaque(node, f"{target}") if incoming is not None else None
    if target in _ELEMENTWISE or (is_method and target in _ELEMENTWISE_METHODS):
        operands = [arg for arg in node.args if isinstance(arg, fx.Node) and space_of.get(arg) is not None]
        if not operands:
            return None
        merged = space_of[operands[0]]
        for other in operands[1:]:
            merged = spaces.union(merged, space_of[other], f"{getattr(target, '__name__', target)} of unequal widths")
        return merged
    known = target in _KNOWN_METHODS if is_method else target in _KNOWN_FUNCTIONS
    if incoming is None:  # e.g. torch.cat([a, b]): the tensors sit in a list; opaque() pins them all
        return None if known else opaque(node, f"{getattr(target, '__name__', target)}, unknown to channel pruning")
    if target in _SAME_CHANNELS_FUNCTIONS or (is_method and target in _SAME_CHANNELS_METHODS):
        return incoming
    if target in _REDUCTIONS or (is_method and target in _REDUCTION_METHODS):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        over_channels = not dims or any(dim % len(in_shape) == 1 for dim in dims)
        keeps = not over_channels and _keeps_channels(in_shape, out_shape)
        return incoming if keeps else opaque(node, f"{target} over channels")
    if target in _FLATTENS or (is_method and target in _FLATTEN_METHODS):
        return incoming if _keeps_channels(in_shape, out_shape) else opaque(node, f"{target} mixing channels and pixels")
    return opaque(node, f"{getattr(target, '__name__', target)}, unknown to channel pruning")


def _keeps_channels(in_shape, out_shape) -> bool:
    """A reshape or reduction that keeps channel c at index c of dim 1: (N, C, 1, 1) -> (N, C), or (N, C, H, W) ->
    (N, C) by pooling."""
    if in_shape is None or out_shape is None or len(out_shape) < 2 or in_shape[:2] != out_shape[:2]:
        return False
    return len(out_shape) == 2 or tuple(out_shape[2:]) in ((1,) * (len(out_shape) - 2), tuple(in_shape[2:]))
