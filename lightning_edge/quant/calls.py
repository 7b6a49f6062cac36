"""Fake-quantize the results of functional calls in ``forward`` (``F.relu``, ``torch.cat``, ``x * gate``, ...).

A module's output can be fake-quantized by a forward hook; ``torch.cat([a, b])`` or ``x.mean((2, 3))``
written in a ``forward`` has no module to hook. Rewriting the network (an ``fx.GraphModule``) would change
its class, code and module paths, which feature taps, pruning, checkpoints and users rely on. Instead the
network keeps everything and a ``TorchFunctionMode`` is active while its forward runs: entered by a forward
pre-hook on the root and left by its forward hook (``always_call``, so an exception leaves it too). The mode
sees every torch call; it counts the calls of each name the plan quantizes (``graph.call_name``) and
fake-quantizes the result of the ranks the trace found (``Point.call_index``).

The trace holds the calls made in the forwards it entered, not those inside its leaves (torch.nn modules,
BatchNorms: ``QuantPlan.opaque``) nor the quantizers' own arithmetic; hooks on those modules pause the
counting, so the run's calls line up with the trace's. Each forward then checks that it made as many calls
of each name as the trace did, and fails loudly otherwise (a forward that takes another path than its trace,
say ``if self.training``). Being hooks and a mode, this works in train and eval mode, under ``torch.no_grad``,
with DDP (which calls the root module) and in the ONNX export; the state lives in one plain object that
``copy.deepcopy`` and pickling carry along with the model.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_edge.quant.graph import Point, QuantPlan, call_name


class CallQuantization:
    """The fake quantization of a network's call results: which calls, their quantizers, and the run's counts.

    Args:
        plan: the network's plan; its ``"call"`` points are handled here.
        quantizers: the model's ``activation_quantizers``, by point name.
    """

    def __init__(self, plan: QuantPlan, quantizers: nn.ModuleDict):
        self.expected = dict(plan.call_counts)
        self.targets: dict[tuple[str, int], list[tuple[int | None, nn.Module]]] = {}
        for point in plan.points:
            if point.where == "call":
                self.targets.setdefault((point.call, point.call_index), []).append((point.element, quantizers[point.name]))
        self.counts: Counter = Counter()
        self.paused = 0
        self._modes: list[TorchFunctionMode] = []

    def install(self, model: nn.Module, opaque: Iterable[str]) -> None:
        """Hook the root (enter and leave the mode), the opaque modules and the quantizers (pause counting)."""
        model.register_forward_pre_hook(self._enter)
        model.register_forward_hook(self._leave, always_call=True)
        quantizers = [module for module in getattr(model, "activation_quantizers").values()]
        for module in [model.get_submodule(path) for path in opaque] + quantizers:
            module.register_forward_pre_hook(self._pause, prepend=True)
            module.register_forward_hook(self._resume, always_call=True)

    def _enter(self, module: nn.Module, args: tuple) -> None:
        self.counts.clear()
        self.paused = 0
        mode = _CallMode(self)
        mode.__enter__()
        self._modes.append(mode)

    def _leave(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._modes.pop().__exit__(None, None, None)
        if output is None:
            return  # the forward raised; its own error is the one to see
        made = {name: self.counts[name] for name in self.expected}
        if made != self.expected:
            wrong = next(name for name in self.expected if made[name] != self.expected[name])
            raise RuntimeError(
                f"{type(module).__name__}'s forward made {made[wrong]} {wrong!r} calls where its torch.fx trace made "
                f"{self.expected[wrong]}, so prepare_qat cannot tell which results to quantize. Make the forward "
                "independent of train/eval mode and of data, or make that step a module"
            )

    def _pause(self, module: nn.Module, args: tuple) -> None:
        self.paused += 1

    def _resume(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.paused -= 1

    def after_call(self, func: Any, result: Any) -> Any:
        """Count a torch call made in the forward; fake-quantize its result when the plan has a point there."""
        if self.paused:
            return result
        name = call_name(func)
        if name not in self.expected:
            return result
        index = self.counts[name]
        self.counts[name] += 1
        for element, quantizer in self.targets.get((name, index), ()):
            if element is None:
                result = quantizer(result)
            else:
                result = type(result)(quantizer(item) if position == element else item for position, item in enumerate(result))
        return result


class _CallMode(TorchFunctionMode):
    """Runs each torch call, then hands its result to ``CallQuantization.after_call``.

    Inside ``__torch_function__`` the mode is off, so the quantizers' own torch calls are not seen.
    """

    def __init__(self, owner: CallQuantization):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.owner.after_call(func, func(*args, **(kwargs or {})))


def call_points(plan: QuantPlan) -> list[Point]:
    """The points of ``plan`` that ``CallQuantization`` quantizes."""
    return [point for point in plan.points if point.where == "call"]
