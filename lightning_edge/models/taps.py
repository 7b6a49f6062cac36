"""Feature taps: intermediate outputs of a network, addressed by module path and captured by forward hooks.

Module paths are the names of ``model.named_modules()`` (``layer3``, ``blocks.4``), as torchdistill
addresses features. ``stage_points`` finds the last output of each resolution stage of a network:
the entries of timm's ``feature_info`` when the model has it (ours and timm's do), else the outermost,
last-finishing module at each spatial size of a traced forward pass. ``pair_points`` matches the stages
of a student and a teacher by spatial size, as attention transfer pairs the groups of two WRNs.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TapPoint:
    """A module path and the shape (without the batch) of its output for a given input."""

    path: str
    channels: int
    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def __str__(self) -> str:
        return f"{self.path} ({self.channels}x{self.height}x{self.width})"


def first_tensor(output: object) -> torch.Tensor | None:
    """The tensor a module produced: itself, the first tensor of a tuple or list, or a dict's 'logits'/first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        output = [output["logits"]] if "logits" in output else list(output.values())
    if isinstance(output, (tuple, list)):
        return next((item for item in output if isinstance(item, torch.Tensor)), None)
    return None


def find_module(model: nn.Module, path: str, role: str = "model") -> nn.Module:
    """``model.get_submodule(path)`` with an error that suggests the paths that exist."""
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"the {role} has no module at path {path!r}.{hint} Its top-level modules are "
            f"{', '.join(name for name, _ in model.named_children())}"
        ) from None


class FeatureTaps:
    """Keeps the output of each named submodule from the latest forward pass, while enabled.

    Use as a context manager, or call ``remove`` to take the hooks off. ``take`` returns the captured
    tensors in the order of ``paths`` and empties the store, so one step's features never leak into the next.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], role: str = "model"):
        self.paths = list(paths)
        self.role = role
        self.enabled = True
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [
            find_module(model, path, role).register_forward_hook(self._hook(path)) for path in self.paths
        ]

    def _hook(self, path: str):
        def store(module: nn.Module, args: tuple, output: object) -> None:
            if self.enabled:
                tensor = first_tensor(output)
                if tensor is not None:
                    self.outputs[path] = tensor

        return store

    def take(self) -> list[torch.Tensor]:
        missing = [path for path in self.paths if path not in self.outputs]
        if missing:
            raise RuntimeError(
                f"the {self.role}'s forward pass did not run the module(s) {', '.join(missing)}; "
                "pick feature points that every forward pass runs"
            )
        features = [self.outputs[path] for path in self.paths]
        self.outputs.clear()
        return features

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _evaluate(model: nn.Module, example_input: torch.Tensor) -> None:
    """One forward pass in eval mode without gradients: no BN statistics or other state change."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)


def describe_points(model: nn.Module, paths: Iterable[str], example_input: torch.Tensor, role: str = "model") -> list[TapPoint]:
    """The output shape of each module in ``paths`` for ``example_input``; each must be an N x C x H x W map."""
    paths = list(paths)
    with FeatureTaps(model, paths, role) as taps:
        _evaluate(model, example_input)
        features = taps.take()
    points = []
    for path, feature in zip(paths, features):
        if feature.dim() != 4:
            raise ValueError(
                f"the {role}'s module {path!r} outputs shape {tuple(feature.shape)}, not an N x C x H x W feature map; "
                "distil feature maps from convolutional stages"
            )
        points.append(TapPoint(path, *feature.shape[1:]))
    return points


def _feature_info_paths(model: nn.Module) -> list[str] | None:
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)) or not info:
        return None
    paths = [entry.get("module") for entry in info if isinstance(entry, Mapping)]
    if not paths or any(not path for path in paths):
        return None
    return [path for path in paths if _exists(model, path)] or None


def _exists(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def _traced_stage_paths(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Per spatial size (in order of appearance), the shallowest module that finishes last at that size."""
    finished: list[tuple[str, tuple[int, ...]]] = []
    calls: dict[str, int] = {}

    def record(path: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            calls[path] = calls.get(path, 0) + 1
            tensor = first_tensor(output)
            if tensor is not None and tensor.dim() == 4:
                finished.append((path, tuple(tensor.shape[-2:])))

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    try:
        _evaluate(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    best: dict[tuple[int, ...], tuple[int, int, str]] = {}
    order: list[tuple[int, ...]] = []
    for index, (path, size) in enumerate(finished):
        if calls[path] > 1 or size[0] * size[1] <= 1:
            continue  # a module run at several places has no single output; 1x1 maps are pooled vectors
        if size not in best:
            order.append(size)
        rank = (-path.count("."), index)
        if size not in best or rank > best[size][:2]:
            best[size] = (*rank, path)
    return [best[size][2] for size in order]


def stage_points(model: nn.Module, example_input: torch.Tensor, role: str = "model") -> list[TapPoint]:
    """The last output of each resolution stage of ``model`` (from ``feature_info``, else a traced pass)."""
    paths = _feature_info_paths(model) or _traced_stage_paths(model, example_input)
    points = [point for point in describe_points(model, paths, example_input, role) if point.height * point.width > 1]
    by_size: dict[tuple[int, int], TapPoint] = {}
    for point in points:
        by_size[point.size] = point  # the last module at each size ends that stage
    return [point for point in points if by_size[point.size] is point]


def pair_points(
    student: nn.Module, teacher: nn.Module, example_input: torch.Tensor
) -> list[tuple[TapPoint, TapPoint]]:
    """Student and teacher stages that have the same spatial size for ``example_input``, in forward order."""
    student_stages = stage_points(student, example_input, "student")
    teacher_stages = {point.size: point for point in stage_points(teacher, example_input, "teacher")}
    pairs = [(point, teacher_stages[point.size]) for point in student_stages if point.size in teacher_stages]
    if not pairs:
        raise ValueError(
            "points='auto' found no student and teacher stages with the same spatial size for input "
            f"{tuple(example_input.shape[1:])}. Student candidates: {', '.join(map(str, student_stages)) or 'none'}. "
            f"Teacher candidates: {', '.join(map(str, teacher_stages.values())) or 'none'}. "
            "Give the pairs yourself: points=[['STUDENT_PATH', 'TEACHER_PATH'], ...]"
        )
    return pairs


def parse_point_pairs(points: Sequence[str | Sequence[str]] | Mapping[str, str]) -> list[tuple[str, str]]:
    """``["layer1", "s:t", ["s", "t"]]`` or ``{"s": "t"}`` as (student path, teacher path) pairs."""
    if isinstance(points, Mapping):
        return [(str(s), str(t)) for s, t in points.items()]
    if isinstance(points, str):
        points = [points]
    pairs = []
    for point in points:
        if isinstance(point, str):
            student_path, _, teacher_path = point.partition(":")
            pairs.append((student_path, teacher_path or student_path))
        elif isinstance(point, Sequence) and len(point) == 2 and all(isinstance(p, str) for p in point):
            pairs.append((point[0], point[1]))
        else:
            raise ValueError(f"a feature point is 'PATH', 'STUDENT_PATH:TEACHER_PATH' or a pair of paths, got {point!r}")
    if not pairs:
        raise ValueError("points is empty: give 'auto', or pairs of module paths")
    return pairs


def resolve_points(
    student: nn.Module,
    teacher: nn.Module,
    points: str | Sequence[str | Sequence[str]] | Mapping[str, str],
    example_input: torch.Tensor,
) -> list[tuple[TapPoint, TapPoint]]:
    """Pairs of feature points for ``points`` ("auto", or explicit paths), with their shapes."""
    if isinstance(points, str) and points == "auto":
        return pair_points(student, teacher, example_input)
    pairs = parse_point_pairs(points)
    student_points = describe_points(student, [s for s, _ in pairs], example_input, "student")
    teacher_points = describe_points(teacher, [t for _, t in pairs], example_input, "teacher")
    return list(zip(student_points, teacher_points))
