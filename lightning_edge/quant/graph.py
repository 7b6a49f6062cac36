"""Find where a network holds int8 tensors once deployed, by tracing it with ``torch.fx``.

The trace is only read, never run: the prepared model keeps its own classes, module paths and forward
code, so feature taps, pruning and checkpoints keep working. From the trace comes a :class:`QuantPlan`:

- *folds*: each Conv2d with the BatchNorm (and ReLU/ReLU6) that follows it, each Linear, each BatchNorm
  with nothing to fold into (pre-activation blocks);
- *points*: every tensor the INT8 runtime stores as int8: the input, the output of each fused layer, of
  each residual add (with its ReLU), of average pooling; plus *shared* points after ops that keep values
  on their input's grid (max pooling, flatten, zero padding) where a quantized layer reads them;
- an *anchor* for each point: the module whose output (or, failing that, whose input) it is, so a
  forward hook can fake-quantize it without touching the model's code.

A network with an op the INT8 runtime cannot run fails here, naming the op and the module it is in.
"""
from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
# Ops that compute nothing at inference (the exporter drops them): values pass through untouched.
_INVISIBLE_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
_INVISIBLE_FUNCTIONS = (F.dropout, F.dropout2d)
# Ops that keep every value on its input's int8 grid: max, reshaping, zero padding, slicing, ReLU.
_GRID_MODULES = (nn.MaxPool2d, nn.Flatten)
_GRID_FUNCTIONS = (F.max_pool2d, torch.flatten, torch.reshape, operator.getitem)
_GRID_METHODS = ("flatten", "view", "reshape", "contiguous", "squeeze")
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_AVGPOOL_FUNCTIONS = (F.adaptive_avg_pool2d, F.avg_pool2d)
_META_METHODS = ("size", "dim")

SUPPORTED = (
    "Conv2d, Linear, BatchNorm2d (timm's BatchNormAct2d too), ReLU, ReLU6, residual add, average and max "
    "pooling, flatten/reshape, zero padding, dropout, Identity"
)


class UnsupportedModelError(ValueError):
    """The network has an op the INT8 runtime cannot run; the message names it and where it is."""


@dataclass
class Fold:
    """One quantized weighted layer: a conv (+ the BatchNorm folded into it), a linear, or a lone BatchNorm."""

    kind: str                      # "conv", "linear" or "batchnorm"
    path: str                      # the module that becomes the quantized layer
    bn_path: str | None = None     # the BatchNorm folded into the conv (replaced by its activation or Identity)
    activation: str | None = None  # "relu" or "relu6" fused at the output, None when linear
    input_point: str = ""          # the int8 point (Point.name) the layer reads


@dataclass
class Point:
    """A tensor held as int8: where it is (fx node), and the module hook that fake-quantizes it."""

    name: str                      # a readable, unique key (also the quantizer's name in the model)
    node: str                      # fx node name
    anchor: str                    # module path ("" for the root)
    where: str                     # "output" or "input"
    source: str | None = None      # for a shared point: the point whose grid it reuses
    description: str = ""
    nonnegative: bool = False      # after a ReLU/ReLU6: the value is never below zero


@dataclass
class QuantPlan:
    """Everything ``prepare_qat`` changes in a network, found from one trace."""

    folds: list[Fold] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)


@dataclass
class _ModuleCall:
    path: str
    module: nn.Module
    input_node: fx.Node | None
    output_node: fx.Node | None


class _RecordingTracer(fx.Tracer):
    """Traces through every module but the torch.nn leaves and BatchNorms; records each module call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_ModuleCall] = []

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, nn.BatchNorm2d) or super().is_leaf_module(module, qualified_name)

    def call_module(self, module: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        output = super().call_module(module, forward, args, kwargs)
        first = args[0] if args else None
        self.calls.append(_ModuleCall(
            self.path_of_module(module), module,
            first.node if isinstance(first, fx.Proxy) else None,
            output.node if isinstance(output, fx.Proxy) else None,
        ))
        return output


def trace(model: nn.Module) -> tuple[fx.Graph, list[_ModuleCall], dict[str, nn.Module]]:
    """The flat fx graph of ``model`` and every module call in it; a clear error when it cannot be traced."""
    tracer = _RecordingTracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises many types for data-dependent control flow
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx to find its int8 tensors: {error}. "
            "prepare_qat needs a forward without data-dependent Python control flow"
        ) from error
    # The root's own call is not recorded by call_module; add it so its input can anchor a point.
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    outputs = [node for node in graph.nodes if node.op == "output"]
    result = outputs[0].args[0] if outputs and isinstance(outputs[0].args[0], fx.Node) else None
    tracer.calls.append(_ModuleCall("", model, placeholders[0] if placeholders else None, result))
    return graph, tracer.calls, dict(model.named_modules())


def _where(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """``'op' in module 'path'``: how an error names a node."""
    stack = node.meta.get("nn_module_stack") or {}
    inside = next(reversed(stack.values()))[0] if stack else ""
    if node.op == "call_module":
        module = modules[node.target]
        return f"module {node.target!r} ({type(module).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target!r}" + (f" in module {inside!r}" if inside else " in the model's forward")


def _activation_kind(module: nn.Module) -> str | None:
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.ReLU6 or (type(module) is nn.Hardtanh and module.min_val == 0.0 and module.max_val == 6.0):
        return "relu6"
    return None


def classify(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The role of a node: input, output, conv, linear, bn, relu, relu6, add, avgpool, grid, invisible, meta.

    Raises UnsupportedModelError for anything else.
    """
    if node.op in ("placeholder", "output"):
        return "input" if node.op == "placeholder" else "output"
    if node.op == "get_attr":
        return "meta"
    if node.op == "call_module":
        module = modules[node.target]
        if type(module) is nn.Conv2d:
            return "conv"
        if type(module) is nn.Linear:
            return "linear"
        if isinstance(module, nn.BatchNorm2d):
            return "bn"
        activation = _activation_kind(module)
        if activation:
            return activation
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
            return "avgpool"
        if isinstance(module, _GRID_MODULES):
            return "grid"
        if isinstance(module, _INVISIBLE_MODULES) or type(module).__name__ == "DropPath":
            return "invisible"
    elif node.op == "call_function":
        if node.target is getattr:
            return "meta"
        if node.target in _ADD_FUNCTIONS and all(isinstance(arg, fx.Node) for arg in node.args[:2]):
            return "add"
        if node.target in _RELU_FUNCTIONS:
            return "relu"
        if node.target is F.relu6:
            return "relu6"
        if node.target is F.hardtanh and tuple(node.args[1:3]) == (0.0, 6.0):
            return "relu6"
        if node.target in _AVGPOOL_FUNCTIONS:
            return "avgpool"
        if node.target in _INVISIBLE_FUNCTIONS:
            return "invisible"
        if node.target is F.pad and _is_zero_constant_pad(node):
            return "grid"
        if node.target in _GRID_FUNCTIONS:
            return "grid"
    elif node.op == "call_method":
        if node.target in _META_METHODS:
            return "meta"
        if node.target in ("relu", "relu_"):
            return "relu"
        if node.target in ("add", "add_") and len(node.args) >= 2 and isinstance(node.args[1], fx.Node):
            return "add"
        if node.target in _GRID_METHODS:
            return "grid"
        if node.target == "mean" and _is_spatial_mean(node):
            return "avgpool"
    raise UnsupportedModelError(
        f"prepare_qat cannot quantize {_where(node, modules)}: the INT8 runtime runs {SUPPORTED}. "
        "Replace the op, or keep this network in float"
    )


def _is_zero_constant_pad(node: fx.Node) -> bool:
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
    return mode == "constant" and not value


def _is_spatial_mean(node: fx.Node) -> bool:
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
    return sorted(dims) in ([2, 3], [-2, -1])


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _next_in_chain(node: fx.Node, kinds: dict[fx.Node, str]) -> fx.Node | None:
    """The only consumer of ``node``, looking through ops that compute nothing (Identity, dropout)."""
    follower = _single_user(node)
    while follower is not None and kinds[follower] == "invisible":
        follower = _single_user(follower)
    return follower


def build_plan(model: nn.Module) -> QuantPlan:
    """Trace ``model`` and decide its folds, int8 points and their anchors (see the module docstring)."""
    if isinstance(model, CONTAINERS):
        raise UnsupportedModelError(
            f"prepare_qat needs a network class with its own forward, got a bare {type(model).__name__}; "
            "wrap it: class Net(nn.Module) holding it as self.body and returning self.body(x)"
        )
    graph, calls, modules = trace(model)
    call_count = Counter(call.path for call in calls)
    kinds = {node: classify(node, modules) for node in graph.nodes}
    plan = QuantPlan()
    grid_source: dict[fx.Node, fx.Node] = {}   # node -> the point node whose grid its values lie on
    point_nodes: dict[fx.Node, Point] = {}
    absorbed: set[fx.Node] = set()

    def module_once(node: fx.Node) -> bool:
        return node.op == "call_module" and call_count[node.target] == 1

    def add_point(node: fx.Node, description: str, source: fx.Node | None = None, nonnegative: bool = False) -> None:
        anchor, where = _anchor(node, calls, call_count, modules)
        name = _point_name(anchor, where, node, {point.name for point in plan.points})
        if source is not None:
            nonnegative = point_nodes[source].nonnegative
        point = Point(name, node.name, anchor, where, point_nodes[source].name if source is not None else None,
                      description, nonnegative)
        plan.points.append(point)
        point_nodes[node] = point

    def through_invisible(node: Any) -> Any:
        """The node whose value reaches here unchanged through Identity and dropout."""
        while isinstance(node, fx.Node) and kinds[node] == "invisible" and node not in point_nodes:
            node = node.args[0]
        return node

    def quantized_input(consumer: fx.Node, value: Any) -> fx.Node:
        """The point node ``value`` (an input of a quantized op) holds, adding a shared point when needed."""
        if not isinstance(value, fx.Node):
            raise UnsupportedModelError(f"{_where(consumer, modules)} takes a constant operand; the INT8 runtime needs tensors")
        node = through_invisible(value)
        if node in point_nodes:
            return node
        if node in grid_source:
            add_point(node, f"shared grid after {_where(node, modules)}", source=grid_source[node])
            return node
        raise UnsupportedModelError(
            f"{_where(consumer, modules)} reads {_where(node, modules)}, whose value is not an int8 tensor"
        )

    for node in graph.nodes:
        kind = kinds[node]
        if node in absorbed or kind in ("meta", "output"):
            continue
        if kind == "input":
            add_point(node, "network input")
        elif kind in ("conv", "linear", "bn"):
            if not module_once(node):
                raise UnsupportedModelError(
                    f"{_where(node, modules)} is called {call_count[node.target]} times; quantization needs one "
                    "module per use (each use gets its own folding and ranges)"
                )
            input_point = point_nodes[quantized_input(node, node.args[0])].name
            end, fold = node, Fold(kind if kind != "bn" else "batchnorm", node.target, input_point=input_point)
            if kind == "bn":
                fold.activation = _bn_act_kind(modules[node.target], node, modules)
            follower = _next_in_chain(end, kinds)
            if kind == "conv" and follower is not None and kinds[follower] == "bn" and module_once(follower):
                fold.bn_path, end = follower.target, follower
                absorbed.add(follower)
                fold.activation = _bn_act_kind(modules[follower.target], follower, modules)
                follower = _next_in_chain(end, kinds)
            if fold.activation is None and follower is not None and kinds[follower] in ("relu", "relu6"):
                fold.activation, end = kinds[follower], follower
                absorbed.add(follower)
            plan.folds.append(fold)
            add_point(end, f"output of {fold.kind} {fold.path}" + (f" + {fold.activation}" if fold.activation else ""),
                      nonnegative=fold.activation is not None)
        elif kind == "add":
            for operand in node.args[:2]:
                quantized_input(node, operand)
            end, follower = node, _next_in_chain(node, kinds)
            if follower is not None and kinds[follower] in ("relu", "relu6"):
                end = follower
                absorbed.add(follower)
            add_point(end, "residual add" + (f" + {kinds[follower]}" if end is not node else ""), nonnegative=end is not node)
        elif kind == "avgpool":
            pooled = quantized_input(node, node.args[0])
            add_point(node, f"average pooling ({_where(node, modules)})", nonnegative=point_nodes[pooled].nonnegative)
        elif kind in ("grid", "relu", "relu6"):
            source = through_invisible(node.args[0])
            if source in point_nodes:
                grid_source[node] = source
            elif source in grid_source:
                grid_source[node] = grid_source[source]
    return plan


def _bn_act_kind(bn: nn.Module, node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The activation a timm BatchNormAct2d applies (None for a plain BatchNorm2d or an Identity act)."""
    act = getattr(bn, "act", None)
    if act is None or isinstance(act, nn.Identity):
        return None
    kind = _activation_kind(act)
    if kind is None:
        raise UnsupportedModelError(
            f"{_where(node, modules)} applies {type(act).__name__}; the INT8 runtime fuses only ReLU and ReLU6"
        )
    return kind


def _anchor(
    node: fx.Node, calls: list[_ModuleCall], call_count: Counter, modules: dict[str, nn.Module]
) -> tuple[str, str]:
    """The module whose output is ``node`` (innermost, called once, not a container), else whose input it is."""
    if node.op == "placeholder":
        return "", "input"  # the root's forward pre-hook quantizes the input before any layer reads it
    producers = [
        call.path for call in calls
        if call.output_node is node and call_count[call.path] == 1 and not isinstance(call.module, CONTAINERS)
    ]
    if producers:
        return max(producers, key=lambda path: (path.count(".") + bool(path), len(path))), "output"
    consumers = [
        call.path for call in calls
        if call.input_node is node and call_count[call.path] == 1 and not isinstance(call.module, CONTAINERS)
    ]
    if consumers and len(node.users) == 1:
        return min(consumers, key=lambda path: (path.count(".") + bool(path), len(path))), "input"
    raise UnsupportedModelError(
        f"cannot fake-quantize the value of {_where(node, modules)}: it is neither the output of a module called "
        "once nor the only input of one. Make that step a module (e.g. nn.ReLU instead of F.relu) or give each "
        "use its own module"
    )


def _point_name(anchor: str, where: str, node: fx.Node, taken: set[str]) -> str:
    base = (anchor.replace(".", "_") or "model") + ("" if where == "output" else "_input")
    name, index = base, 1
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    return name
