"""Find where a network holds int8 tensors once deployed, by tracing it with ``torch.fx``.

The trace is only read, never run: the prepared model keeps its own classes, module paths and forward
code, so feature taps, pruning and checkpoints keep working. From the trace comes a :class:`QuantPlan`:

- *folds*: each Conv2d with the BatchNorm (and ReLU/ReLU6) that follows it, each Linear, each BatchNorm
  with nothing to fold into (pre-activation blocks);
- *points*: every tensor the INT8 runtime stores as int8: the input, the output of each fused layer, of
  each residual add (with its ReLU), and of every op the runtime computes in float between a dequantize
  and a requantize (INT8_SPEC's last rule): activations (HardSwish, Sigmoid, SiLU, GELU, ...; a timm
  BatchNormAct2d's too, after its folded conv), mul/sub/div and ops with a constant operand, concat,
  average pooling and means, interpolation, LayerNorm, softmax and attention. Plus *shared* points after
  ops that keep values on their input's grid (max pooling, flatten, view/reshape/permute, slicing, chunk,
  channel shuffle, zero padding, a ReLU not fused) where a quantized op reads them. A concat whose inputs
  are points of their own read by it alone puts them on its own grid, so it only copies codes;
- an *anchor* for each point: the module whose output (or, failing that, whose only input) it is, so a
  forward hook can fake-quantize it without touching the model's code; for a functional call in a
  ``forward`` (``F.relu``, ``torch.cat``, ``x * gate``) with no such module, the call itself, found again
  at run time by ``quant.calls``.

Functions and tensor methods are recognised by their canonical name (``call_name``), the same for the
trace's targets and for what a ``TorchFunctionMode`` sees at run time. A network with an op the INT8
runtime cannot run, or one fx cannot trace, fails here, naming the op and the module it is in. A forward that
branches on its input's size (timm's MobileViT) traces when the size is given: ``QuantConfig(input_shape=...)``.
"""
from __future__ import annotations

import copy
import inspect
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.experimental.meta_tracer import MetaTracer

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
# Modules by role. Leaves of the trace (torch.nn modules, BatchNorms, DropPath) are classified by type; every
# other module is traced through, so its functional calls are classified by name (``call_name``).
_INVISIBLE_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
_DROP_PATH_MODULES = ("DropPath", "StochasticDepth")  # timm's and torchvision's: identity at inference
_LINEAR_SUBCLASSES = ("timm.layers.linear.Linear",)  # computes exactly nn.Linear (a TorchScript-friendly copy)
_GRID_MODULES = (nn.MaxPool2d, nn.Flatten, nn.ChannelShuffle, nn.ZeroPad2d)
_ACTIVATION_MODULES = (nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.PReLU, nn.GELU,
                       nn.ELU, nn.Mish, nn.Hardtanh)
_FLOAT_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.Softmax)
_RESAMPLE_MODULES = (nn.Upsample,)
# timm's own activation classes (its GELU, Sigmoid, Tanh, ...) are elementwise like the torch.nn ones.
_TIMM_ACTIVATIONS = "timm.layers.activations"

# Functions and tensor methods by canonical name (``call_name``: F.relu, torch.relu and Tensor.relu are all "relu").
_CALL_KINDS = {
    **dict.fromkeys(("relu",), "relu"),
    **dict.fromkeys(("relu6",), "relu6"),
    **dict.fromkeys(("hardswish", "hardsigmoid", "sigmoid", "silu", "tanh", "leaky_relu", "prelu", "gelu", "elu",
                     "mish"), "activation"),
    **dict.fromkeys(("add", "sub", "mul", "div", "matmul"), "arithmetic"),
    **dict.fromkeys(("adaptive_avg_pool2d", "avg_pool2d"), "avgpool"),
    **dict.fromkeys(("mean",), "mean"),
    **dict.fromkeys(("cat", "concat", "concatenate"), "cat"),
    **dict.fromkeys(("interpolate", "upsample"), "resample"),
    **dict.fromkeys(("layer_norm", "group_norm", "softmax", "scaled_dot_product_attention", "bmm"), "float"),
    **dict.fromkeys(("max_pool2d", "flatten", "reshape", "view", "contiguous", "squeeze", "unsqueeze", "permute",
                     "transpose", "getitem", "chunk", "split", "unbind", "channel_shuffle", "native_channel_shuffle"),
                    "grid"),
    **dict.fromkeys(("dropout", "dropout2d", "alpha_dropout"), "invisible"),
    **dict.fromkeys(("size", "dim", "numel", "getattr"), "meta"),
}
# Calls whose result is a tuple of tensors: indexing it is plain Python, never a torch call.
_TUPLE_CALLS = ("chunk", "split", "unbind")
# Canonical names of the reflected and in-place spellings the runtime reports (``x += y`` is ``add_``, ``1 - x``
# is ``__rsub__``) and of fx's ``operator`` targets.
_CALL_ALIASES = {"truediv": "div", "rsub": "sub", "radd": "add", "rmul": "mul", "rtruediv": "div", "rdiv": "div",
                 "iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "div", "rmatmul": "matmul"}
# Ops whose output is re-quantized onto a grid of its own (INT8_SPEC: dequantize, float op, requantize).
_REQUANTIZED = ("activation", "arithmetic", "scale", "avgpool", "mean", "cat", "resample", "float")

SUPPORTED = (
    "Conv2d, Linear, BatchNorm2d (timm's BatchNormAct2d too), ReLU, ReLU6, HardSwish, HardSigmoid, Sigmoid, SiLU, "
    "Tanh, LeakyReLU, PReLU, GELU, ELU, Mish, add/sub/mul/div/matmul, concat, average and max pooling, mean, "
    "interpolate, LayerNorm, GroupNorm, softmax, attention, flatten/view/reshape/permute/transpose/slicing/chunk, "
    "channel shuffle, zero padding, dropout, Identity"
)


def call_name(target: Any) -> str:
    """The canonical name of a function, tensor method or ``operator`` target, as traced and as run.

    The trace records ``operator.add``, ``torch.cat`` or the method name ``"mean"``; at run time a
    ``TorchFunctionMode`` sees ``Tensor.add``, ``torch.cat``, ``Tensor.mean``, ``Tensor.__rsub__``, ``Tensor.add_``.
    Both map to the same name, which is how ``quant.calls`` finds each traced call again.
    """
    name = (target if isinstance(target, str) else getattr(target, "__name__", "")).strip("_")
    return _CALL_ALIASES.get(name, name)


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
    """A tensor held as int8: where it is (fx node), and the hook that fake-quantizes it.

    ``where`` is ``"output"`` or ``"input"`` of the module ``anchor``, or ``"call"``: the result of the
    ``call_index``-th call named ``call`` (``graph.call_name``) in a forward of the whole network, or element
    ``element`` of that call's tuple result (``quant.calls`` intercepts it; ``anchor`` is then the module whose
    forward makes the call).
    """

    name: str                      # a readable, unique key (also the quantizer's name in the model)
    node: str                      # fx node name
    anchor: str                    # module path ("" for the root)
    where: str                     # "output", "input" or "call"
    source: str | None = None      # for a shared point: the point whose grid it reuses
    description: str = ""
    nonnegative: bool = False      # after a ReLU/ReLU6: the value is never below zero
    call: str | None = None        # for where == "call": the canonical name of the call
    call_index: int = -1           # ... its rank among the forward's calls of that name
    element: int | None = None     # ... the element of its tuple result, None for a tensor result
    widens_source: bool = False    # a concat input on the concat's grid: its range widens the concat's


@dataclass
class QuantPlan:
    """Everything ``prepare_qat`` changes in a network, found from one trace.

    ``opaque`` lists the modules the trace did not enter (its leaves): torch calls inside them are not in the
    trace, so ``quant.calls`` does not count them.
    """

    folds: list[Fold] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)
    call_counts: dict[str, int] = field(default_factory=dict)  # per call name with points: calls per forward


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
        return (isinstance(module, nn.BatchNorm2d) or _is_linear(module) or type(module).__name__ in _DROP_PATH_MODULES
                or super().is_leaf_module(module, qualified_name))

    def call_module(self, module: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        output = super().call_module(module, forward, args, kwargs)
        first = args[0] if args else None
        self.calls.append(_ModuleCall(
            self.path_of_module(module), module,
            first.node if isinstance(first, fx.Proxy) else None,
            output.node if isinstance(output, fx.Proxy) else None,
        ))
        return output


class _ShapeTracer(_RecordingTracer, MetaTracer):
    """The recording trace with sizes known: each value carries a meta tensor of its shape (``MetaTracer``), so
    ``x.shape`` is plain numbers and a forward that branches on its input's size traces the branch it takes.

    While ``MetaTracer`` computes a leaf module's meta output it calls the module again; that call must run the
    module plainly, not record it a second time.
    """

    def call_module(self, module: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        if getattr(self, "_disable_module_getattr", False):
            return forward(*args, **kwargs)
        return super().call_module(module, forward, args, kwargs)


def trace(model: nn.Module, input_shape: tuple[int, ...] | None = None
          ) -> tuple[fx.Graph, list[_ModuleCall], dict[str, nn.Module]]:
    """The flat fx graph of ``model`` and every module call in it; a clear error when it cannot be traced.

    With ``input_shape`` (C, H, W) the trace knows every tensor's size (on a meta-device copy of the model,
    so nothing is computed), and Python code that branches on sizes is specialised to that input size.
    """
    placeholder = _forward_input_name(model) if input_shape is not None else None  # only a shaped trace names it
    try:
        if input_shape is None:
            tracer = _RecordingTracer()
            graph = tracer.trace(model)
        else:
            tracer = _ShapeTracer()
            meta_model = copy.deepcopy(model).to("meta")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MetaTracer warns for every size it cannot infer; the trace says more
                graph = tracer.trace(meta_model, meta_args={placeholder: torch.zeros(1, *input_shape, device="meta")})
            tracer.calls = [_ModuleCall(call.path, model.get_submodule(call.path), call.input_node, call.output_node)
                            for call in tracer.calls]
    except Exception as error:  # fx raises many types for data-dependent control flow
        hint = ("prepare_qat needs a forward without data-dependent Python control flow; if it branches only on "
                "its input's size, give the size: QuantConfig(input_shape=(C, H, W))") if input_shape is None else (
                "prepare_qat needs a forward whose Python control flow depends on sizes at most")
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx to find its int8 tensors: {error}. {hint}"
        ) from error
    # The root's own call is not recorded by call_module; add it so its input can anchor a point.
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    outputs = [node for node in graph.nodes if node.op == "output"]
    result = outputs[0].args[0] if outputs and isinstance(outputs[0].args[0], fx.Node) else None
    tracer.calls.append(_ModuleCall("", model, placeholders[0] if placeholders else None, result))
    return graph, tracer.calls, dict(model.named_modules())


def _forward_input_name(model: nn.Module) -> str:
    """The name of ``forward``'s first argument: the placeholder a shaped trace gives its meta tensor."""
    parameters = list(inspect.signature(model.forward).parameters)
    if not parameters:
        raise UnsupportedModelError(f"{type(model).__name__}.forward takes no input; prepare_qat needs one tensor")
    return parameters[0]


def _where(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """``'op' in module 'path'``: how an error names a node."""
    stack = node.meta.get("nn_module_stack") or {}
    inside = next(reversed(stack.values()))[0] if stack else ""
    if node.op == "call_module":
        module = modules[node.target]
        return f"module {node.target!r} ({type(module).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target!r}" + (f" in module {inside!r}" if inside else " in the model's forward")


def _is_linear(module: nn.Module) -> bool:
    cls = type(module)
    return cls is nn.Linear or f"{cls.__module__}.{cls.__qualname__}" in _LINEAR_SUBCLASSES


def _activation_kind(module: nn.Module) -> str | None:
    """"relu" or "relu6" (a conv fuses them), "activation" for another elementwise activation, else None."""
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.ReLU6 or (type(module) is nn.Hardtanh and module.min_val == 0.0 and module.max_val == 6.0):
        return "relu6"
    if isinstance(module, _ACTIVATION_MODULES) or type(module).__module__ == _TIMM_ACTIVATIONS:
        return "activation"
    return None


def _value_kinds(graph: fx.Graph) -> dict[fx.Node, str]:
    """Each node's value: "data" (depends on the input), "constant" (from parameters alone) or "meta" (sizes).

    fx records a call only when a traced value flows into it, so every call node has at least one input node.
    """
    values: dict[fx.Node, str] = {}
    for node in graph.nodes:
        if node.op in ("placeholder", "call_module"):
            values[node] = "data"
        elif node.op == "get_attr":
            values[node] = "constant"
        elif node.op == "output" or _CALL_KINDS.get(call_name(node.target)) == "meta":
            values[node] = "meta"
        else:
            sources = {values[source] for source in node.all_input_nodes}
            values[node] = "data" if "data" in sources else "constant" if "constant" in sources else "meta"
    return values


def _returns_tuple(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op in ("call_function", "call_method") and call_name(node.target) in _TUPLE_CALLS


def _call_ranks(graph: fx.Graph, values: dict[fx.Node, str]) -> dict[fx.Node, tuple[str, int]]:
    """For each node that is a torch call at run time: its canonical name and its rank among calls of that name.

    Sizes are plain Python numbers at run time, and indexing a tuple (``a, b = x.chunk(2)``) is no torch call.
    """
    ranks: dict[fx.Node, tuple[str, int]] = {}
    counts: Counter = Counter()
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method") or values[node] == "meta":
            continue
        name = call_name(node.target)
        if name == "getitem" and _returns_tuple(node.args[0]):
            continue
        ranks[node] = (name, counts[name])
        counts[name] += 1
    return ranks


def _is_torch_function(target: Any) -> bool:
    module = getattr(target, "__module__", None) or ""
    return module.split(".")[0] in ("torch", "_operator", "operator", "builtins")


def classify(node: fx.Node, modules: dict[str, nn.Module], values: dict[fx.Node, str]) -> str:
    """The role of a node: input, output, meta, constant, conv, linear, bn, relu, relu6, add, grid, invisible, or
    one of ``_REQUANTIZED`` (an op whose output gets a grid of its own).

    Raises UnsupportedModelError for anything else.
    """
    if node.op in ("placeholder", "output"):
        return "input" if node.op == "placeholder" else "output"
    if node.op != "call_module" and values[node] != "data":
        return values[node]
    if node.op == "call_module":
        kind = _module_kind(modules[node.target])
        if kind:
            return kind
    elif node.op == "call_method" or _is_torch_function(node.target):
        kind = _call_kind(node, values)
        if kind:
            return kind
    raise UnsupportedModelError(
        f"prepare_qat cannot quantize {_where(node, modules)}: the INT8 runtime runs {SUPPORTED}. "
        "Replace the op, or keep this network in float"
    )


def _module_kind(module: nn.Module) -> str | None:
    if type(module) is nn.Conv2d:
        return "conv"
    if _is_linear(module):
        return "linear"
    if isinstance(module, nn.BatchNorm2d):
        return "bn"
    for types, kind in ((_ACTIVATION_MODULES, None), ((nn.AdaptiveAvgPool2d, nn.AvgPool2d), "avgpool"),
                        (_GRID_MODULES, "grid"), (_FLOAT_MODULES, "float"), (_RESAMPLE_MODULES, "resample"),
                        (_INVISIBLE_MODULES, "invisible")):
        if isinstance(module, types):
            return kind or _activation_kind(module)
    return "invisible" if type(module).__name__ in _DROP_PATH_MODULES else _activation_kind(module)


def _call_kind(node: fx.Node, values: dict[fx.Node, str]) -> str | None:
    name = call_name(node.target)
    if name == "hardtanh":
        return "relu6" if tuple(node.args[1:3]) == (0.0, 6.0) else "activation"
    if name == "pad":
        return "grid" if _is_zero_constant_pad(node) else None
    kind = _CALL_KINDS.get(name)
    if kind == "mean":
        return "avgpool" if _is_spatial_mean(node) else "mean"
    if kind == "arithmetic":
        data = [arg for arg in node.args[:2] if isinstance(arg, fx.Node) and values[arg] == "data"]
        if len(data) == 1:
            return "scale"  # one tensor and a constant: elementwise on one int8 input
        return "add" if name == "add" and len(data) == 2 else kind
    return kind


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


def _data_operands(node: fx.Node, values: dict[fx.Node, str]) -> list[fx.Node]:
    """The input-dependent tensors an op reads (a concat's list elements; parameters and sizes left out)."""
    if call_name(node.target) in ("cat", "concat", "concatenate"):
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        return [item for item in tensors if isinstance(item, fx.Node) and values[item] == "data"]
    return [item for item in node.all_input_nodes if values[item] == "data"]


def build_plan(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> QuantPlan:
    """Trace ``model`` (at ``input_shape`` when given, see ``trace``) and decide its folds, int8 points and their
    anchors (see the module docstring)."""
    if isinstance(model, CONTAINERS):
        raise UnsupportedModelError(
            f"prepare_qat needs a network class with its own forward, got a bare {type(model).__name__}; "
            "wrap it: class Net(nn.Module) holding it as self.body and returning self.body(x)"
        )
    graph, calls, modules = trace(model, input_shape)
    call_count = Counter(call.path for call in calls)
    values = _value_kinds(graph)
    kinds = {node: classify(node, modules, values) for node in graph.nodes}
    ranks = _call_ranks(graph, values)
    plan = QuantPlan(opaque=sorted({node.target for node in graph.nodes if node.op == "call_module"}))
    grid_source: dict[fx.Node, fx.Node] = {}   # node -> the point node whose grid its values lie on
    point_nodes: dict[fx.Node, Point] = {}
    absorbed: set[fx.Node] = set()

    def module_once(node: fx.Node) -> bool:
        return node.op == "call_module" and call_count[node.target] == 1

    def add_point(node: fx.Node, description: str, source: fx.Node | None = None, nonnegative: bool = False) -> None:
        where = _anchor(node, calls, call_count, modules, ranks)
        name = _point_name(where, node, {point.name for point in plan.points})
        if source is not None:
            nonnegative = point_nodes[source].nonnegative
        point = Point(name, node.name, source=point_nodes[source].name if source is not None else None,
                      description=description, nonnegative=nonnegative, **where)
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
        if node in absorbed or kind in ("meta", "constant", "output", "invisible"):
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
            separate_activation = None
            if kind == "bn":
                fold.activation = _bn_act_kind(modules[node.target], node, modules, lone=True)
            follower = _next_in_chain(end, kinds)
            if kind == "conv" and follower is not None and kinds[follower] == "bn" and module_once(follower):
                fold.bn_path, end = follower.target, follower
                absorbed.add(follower)
                fold.activation = _bn_act_kind(modules[follower.target], follower, modules, lone=False)
                if fold.activation == "activation":  # timm's BatchNormAct2d with SiLU, HardSwish, ...
                    fold.activation, separate_activation, end = None, follower, node
                follower = _next_in_chain(follower, kinds)
            if fold.activation is None and separate_activation is None and follower is not None \
                    and kinds[follower] in ("relu", "relu6"):
                fold.activation, end = kinds[follower], follower
                absorbed.add(follower)
            plan.folds.append(fold)
            add_point(end, f"output of {fold.kind} {fold.path}" + (f" + {fold.activation}" if fold.activation else ""),
                      nonnegative=fold.activation is not None)
            if separate_activation is not None:
                act = type(getattr(modules[fold.bn_path], "act")).__name__
                add_point(separate_activation, f"{act} after {fold.kind} {fold.path} (the BatchNorm's activation)")
        elif kind == "add":
            for operand in node.args[:2]:
                quantized_input(node, operand)
            end, follower = node, _next_in_chain(node, kinds)
            if follower is not None and kinds[follower] in ("relu", "relu6"):
                end = follower
                absorbed.add(follower)
            add_point(end, "residual add" + (f" + {kinds[follower]}" if end is not node else ""), nonnegative=end is not node)
        elif kind in _REQUANTIZED:
            inputs = [point_nodes[quantized_input(node, operand)] for operand in _data_operands(node, values)]
            nonnegative = kind in ("avgpool", "cat") and all(point.nonnegative for point in inputs)
            add_point(node, f"{kind} ({_where(node, modules)})", nonnegative=nonnegative)
        elif kind in ("grid", "relu", "relu6"):
            source = through_invisible(node.args[0])
            if source in point_nodes:
                grid_source[node] = source
            elif source in grid_source:
                grid_source[node] = grid_source[source]
    _share_concat_grids(graph, kinds, point_nodes, through_invisible)
    names = {point.call for point in plan.points if point.where == "call"}
    plan.call_counts = {name: sum(rank[0] == name for rank in ranks.values()) for name in sorted(names)}
    return plan


def _share_concat_grids(
    graph: fx.Graph, kinds: dict[fx.Node, str], point_nodes: dict[fx.Node, Point], through_invisible: Any
) -> None:
    """Put a concat's inputs on its output's grid where every input is a point of its own read by it alone.

    Then the concat only copies int8 codes (as INT8_SPEC wants); an input on another grid (a shared point, the
    network input, or a tensor other ops read too) keeps it, and the runtime requantizes it into the concat.
    """
    for node in graph.nodes:
        if kinds[node] != "cat" or node not in point_nodes:
            continue
        inputs = [through_invisible(item) for item in (node.args[0] if node.args else node.kwargs["tensors"])]
        points = [point_nodes.get(item) for item in inputs]
        if len(set(inputs)) != len(inputs) or not all(
            point is not None and point.source is None and point.description != "network input"
            and _next_in_chain(item, kinds) is node
            for item, point in zip(inputs, points)
        ):
            continue
        for point in points:
            point.source, point.widens_source = point_nodes[node].name, True
    by_name = {point.name: point for point in point_nodes.values()}
    for point in point_nodes.values():  # a concat of concats: every input takes the outermost grid
        while point.source is not None and by_name[point.source].source is not None:
            point.source = by_name[point.source].source


def _bn_act_kind(bn: nn.Module, node: fx.Node, modules: dict[str, nn.Module], lone: bool) -> str | None:
    """The activation a timm BatchNormAct2d applies (None for a plain BatchNorm2d or an Identity act).

    "relu"/"relu6" fuse into the layer; "activation" (SiLU, HardSwish, ...) gets a point of its own after a conv.
    """
    act = getattr(bn, "act", None)
    if act is None or isinstance(act, nn.Identity):
        return None
    kind = _activation_kind(act)
    if kind is None or (lone and kind == "activation"):
        raise UnsupportedModelError(
            f"{_where(node, modules)} applies {type(act).__name__}; the INT8 runtime fuses only ReLU and ReLU6"
            + (" into a BatchNorm with no conv before it" if kind else "")
        )
    return kind


def _inside(node: fx.Node) -> str:
    """The path of the module whose forward makes the call ``node`` ("" for the root's)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def _anchor(
    node: fx.Node, calls: list[_ModuleCall], call_count: Counter, modules: dict[str, nn.Module],
    ranks: dict[fx.Node, tuple[str, int]],
) -> dict[str, Any]:
    """Where a hook can fake-quantize ``node``: the output of the module that makes it (innermost, called once,
    not a container), else the input of its only reader, else the torch call that makes it (``quant.calls``)."""
    if node.op == "placeholder":
        return {"anchor": "", "where": "input"}  # the root's forward pre-hook quantizes the input first
    producers = [
        call.path for call in calls
        if call.output_node is node and call_count[call.path] == 1 and not isinstance(call.module, CONTAINERS)
    ]
    if producers:
        return {"anchor": max(producers, key=lambda path: (path.count(".") + bool(path), len(path))), "where": "output"}
    consumers = [
        call.path for call in calls
        if call.input_node is node and call_count[call.path] == 1 and not isinstance(call.module, CONTAINERS)
    ]
    if consumers and len(node.users) == 1:
        return {"anchor": min(consumers, key=lambda path: (path.count(".") + bool(path), len(path))), "where": "input"}
    if node in ranks:
        name, index = ranks[node]
        return {"anchor": _inside(node), "where": "call", "call": name, "call_index": index}
    if call_name(node.target) == "getitem" and node.args[0] in ranks and isinstance(node.args[1], int):
        name, index = ranks[node.args[0]]
        return {"anchor": _inside(node), "where": "call", "call": name, "call_index": index, "element": node.args[1]}
    raise UnsupportedModelError(
        f"cannot fake-quantize the value of {_where(node, modules)}: it is neither the output of a module called "
        "once, nor the only input of one, nor the result of a torch call. Make that step a module or give each "
        "use its own module"
    )


def _point_name(where: dict[str, Any], node: fx.Node, taken: set[str]) -> str:
    base = where["anchor"].replace(".", "_") or "model"
    if where["where"] == "input":
        base += "_input"
    elif where["where"] == "call":
        base += f"_{node.name}"
    name, index = base, 1
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    return name
