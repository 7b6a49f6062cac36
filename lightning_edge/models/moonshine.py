"""Moonshine students: the teacher's architecture with cheap convolutions in its residual blocks.

``derive_student(teacher, block="G(4)")`` copies the teacher, replaces every 3x3 convolution inside a
residual block by the cheap block named in the papers' notation (``lightning_edge.models.block_spec``),
keeps the stem and the 1x1 shortcut convolutions, and re-initialises the copy: the student trains from
scratch (Crowley, Gray and Storkey, "Moonshine: Distilling with Cheap Convolutions", NeurIPS 2018).
Module paths and stages stay the teacher's, so attention transfer pairs them directly.
"""
from __future__ import annotations

import copy
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_edge.models.block_spec import BlockSpec, parse_block_spec
from lightning_edge.models.profile import count_parameters, macs_per_layer

BlockArgument = str | BlockSpec | Sequence[str | BlockSpec]

_RESIDUAL_CLASS_HINTS = ("block", "bottleneck")
_SHORTCUT_NAMES = ("shortcut", "downsample", "skip", "proj")


@dataclass
class ReplacedLayer:
    """One substituted convolution, with its cost before and after."""

    path: str
    spec: str
    in_channels: int
    out_channels: int
    stride: int
    teacher_parameters: int
    student_parameters: int
    teacher_macs: int
    student_macs: int


@dataclass
class StudentReport:
    """What ``derive_student`` did: every replaced layer and the whole networks' size and cost."""

    block: str
    input_shape: tuple[int, int, int]
    layers: list[ReplacedLayer] = field(default_factory=list)
    teacher_parameters: int = 0
    student_parameters: int = 0
    teacher_macs: int = 0
    student_macs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "input_shape": list(self.input_shape),
            "teacher": {"parameters": self.teacher_parameters, "macs": self.teacher_macs},
            "student": {"parameters": self.student_parameters, "macs": self.student_macs},
            "layers": [vars(layer) for layer in self.layers],
        }

    def __str__(self) -> str:
        lines = [
            f"{'layer':<28} {'block':<9} {'in->out/stride':<15} {'params T->S':>19} {'MACs T->S':>23}",
        ]
        for layer in self.layers:
            shape = f"{layer.in_channels}->{layer.out_channels}/{layer.stride}"
            params = f"{layer.teacher_parameters:,}->{layer.student_parameters:,}"
            macs = f"{layer.teacher_macs:,}->{layer.student_macs:,}"
            lines.append(f"{layer.path:<28} {layer.spec:<9} {shape:<15} {params:>19} {macs:>23}")
        ratio_p = self.student_parameters / max(1, self.teacher_parameters)
        ratio_m = self.student_macs / max(1, self.teacher_macs)
        lines.append(
            f"total: parameters {self.teacher_parameters:,} -> {self.student_parameters:,} ({ratio_p:.1%}), "
            f"MACs at {'x'.join(map(str, self.input_shape))} {self.teacher_macs:,} -> {self.student_macs:,} ({ratio_m:.1%})"
        )
        return "\n".join(lines)


def _is_residual_block(module: nn.Module) -> bool:
    """Our BasicBlocks, WRN blocks and timm's BasicBlock / Bottleneck: by class name or a shortcut branch."""
    name = type(module).__name__.lower()
    return any(hint in name for hint in _RESIDUAL_CLASS_HINTS) or any(
        isinstance(getattr(module, attribute, None), nn.Module) for attribute in _SHORTCUT_NAMES
    )


def residual_blocks(model: nn.Module) -> list[str]:
    """Paths of the outermost residual blocks, in forward (registration) order."""
    blocks: list[str] = []
    for path, module in model.named_modules():
        if path and _is_residual_block(module) and not any(path.startswith(block + ".") for block in blocks):
            blocks.append(path)
    return blocks


def _in_shortcut(relative_path: str) -> bool:
    return any(part in _SHORTCUT_NAMES for part in relative_path.split("."))


def _block_convs(model: nn.Module, block_path: str) -> list[str]:
    """The standard 3x3 convolutions of one residual block, outside its shortcut."""
    block = model.get_submodule(block_path)
    return [
        f"{block_path}.{name}"
        for name, module in block.named_modules()
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.groups == 1 and not _in_shortcut(name)
    ]


def _matches(path: str, patterns: Sequence[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns or ())


def _plan(model: nn.Module, block: BlockArgument, include: Sequence[str] | None, exclude: Sequence[str] | None) -> dict[str, BlockSpec]:
    """Which conv gets which spec: one spec for all blocks, or one per residual block (BlockSwap style)."""
    blocks = residual_blocks(model)
    if not blocks and not include:
        raise ValueError(
            f"found no residual blocks in {type(model).__name__} (modules named like *Block/*Bottleneck, or with a "
            "shortcut/downsample branch); name the convolutions to replace with include=['layer1.*.conv*', ...]"
        )
    if isinstance(block, (str, BlockSpec)):
        per_block = [parse_block_spec(block)] * len(blocks)
    else:
        per_block = [parse_block_spec(spec) for spec in block]
        if len(per_block) != len(blocks):
            raise ValueError(
                f"a per-block list needs one spec for each of the {len(blocks)} residual blocks "
                f"({', '.join(blocks)}), got {len(per_block)}"
            )
    plan: dict[str, BlockSpec] = {}
    for block_path, spec in zip(blocks, per_block):
        for conv_path in _block_convs(model, block_path):
            plan[conv_path] = spec
    default = per_block[0] if per_block else parse_block_spec(block if isinstance(block, (str, BlockSpec)) else block[0])
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and _matches(path, include) and path not in plan:
            plan[path] = default
    for path in [path for path in plan if _matches(path, exclude)]:
        del plan[path]
    order = {path: index for index, (path, _) in enumerate(model.named_modules())}
    return {path: plan[path] for path in sorted(plan, key=order.__getitem__) if not plan[path].is_standard}


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, module)


def _reinitialise(model: nn.Module) -> None:
    """Fresh weights everywhere: the model's own scheme when it has one, else each layer's default."""
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
    init = getattr(model, "init_weights", None)
    if callable(init):
        init()


def _default_input_shape(model: nn.Module) -> tuple[int, int, int]:
    config = getattr(model, "pretrained_cfg", None) or {}
    size = config.get("input_size") if isinstance(config, Mapping) else None
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    if size and len(size) == 3:
        return (channels, int(size[1]), int(size[2]))
    return (channels, 32, 32)


def derive_student(
    teacher: nn.Module,
    block: BlockArgument = "G(4)",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> tuple[nn.Module, StudentReport]:
    """A Moonshine student of ``teacher`` and the report of what changed.

    Args:
        teacher: any network; it is copied, never changed.
        block: a spec for every residual block (``"G(4)"``, ``"DW"``, ``"B(2)"``, ``"BG(2,4)"``), or a list
            with one spec per residual block in forward order (``"S"`` keeps a block standard).
        include: glob patterns of conv paths to replace as well (the stem, a shortcut: ``["conv1"]``).
        exclude: glob patterns of conv paths to keep standard (``["layer1.*"]``).
        input_shape: C x H x W for the MACs of the report (default: the model's configured input size).

    Returns:
        The student (re-initialised: it trains from scratch, as in the paper) and a ``StudentReport``.
    """
    plan = _plan(teacher, block, include, exclude)
    if not plan:
        raise ValueError("derive_student replaced no convolution: every planned conv was excluded or given 'S'")
    student = copy.deepcopy(teacher)
    originals = {path: student.get_submodule(path) for path in plan}
    for path, spec in plan.items():
        _set_submodule(student, path, spec.build(originals[path], path))
    _reinitialise(student)
    student.train(teacher.training)

    input_shape = tuple(input_shape or _default_input_shape(teacher))
    teacher_macs = macs_per_layer(teacher, input_shape)
    student_macs = macs_per_layer(student, input_shape)
    label = str(parse_block_spec(block)) if isinstance(block, (str, BlockSpec)) else "per-block"
    report = StudentReport(
        block=label,
        input_shape=input_shape,
        teacher_parameters=count_parameters(teacher),
        student_parameters=count_parameters(student),
        teacher_macs=sum(teacher_macs.values()),
        student_macs=sum(student_macs.values()),
    )
    for path, spec in plan.items():
        conv = originals[path]
        replacement = student.get_submodule(path)
        report.layers.append(
            ReplacedLayer(
                path=path,
                spec=str(spec),
                in_channels=conv.in_channels,
                out_channels=conv.out_channels,
                stride=conv.stride[0],
                teacher_parameters=count_parameters(conv),
                student_parameters=count_parameters(replacement),
                teacher_macs=teacher_macs.get(path, 0),
                student_macs=sum(v for k, v in student_macs.items() if k == path or k.startswith(path + ".")),
            )
        )
    return student, report
