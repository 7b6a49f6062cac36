"""Cheap-block specs in the papers' notation: ``G(4)``, ``DW``, ``B(2)``, ``BG(2,4)``, and ``S`` (standard).

One parser for the whole project: the surgery, the configs and the reports all go through ``parse_block_spec``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from lightning_edge.models.cheap_convs import BottleneckConv, GroupedSeparableConv

_SPEC = re.compile(
    r"^\s*(?:(?P<plain>S|DW)"
    r"|(?P<kind>G|B|BG)\s*\(\s*(?P<a>\d+)\s*(?:,\s*(?P<b>\d+)\s*)?\)"
    r"|(?P<short>G|B|BG)(?P<c>\d+)(?:[x_](?P<d>\d+))?)\s*$",
    re.IGNORECASE,
)
SPEC_HELP = (
    "block specs are G(g), DW, B(b), BG(b,g) or S (keep the standard convolution), e.g. 'G(4)' or 'BG(2,4)'; "
    "on a command line G4, B2 and BG2x4 mean the same"
)


@dataclass(frozen=True)
class BlockSpec:
    """A substitution for a standard convolution: grouped separable, depthwise, bottleneck, or none."""

    kind: str  # "S", "G", "DW", "B" or "BG"
    groups: int = 1
    bottleneck: int = 1

    def __str__(self) -> str:
        if self.kind in ("S", "DW"):
            return self.kind
        if self.kind == "G":
            return f"G({self.groups})"
        if self.kind == "B":
            return f"B({self.bottleneck})"
        return f"BG({self.bottleneck},{self.groups})"

    @property
    def is_standard(self) -> bool:
        return self.kind == "S"

    def check(self, conv: nn.Conv2d, path: str) -> None:
        """Fail naming the conv when this spec cannot apply to it."""
        if conv.groups != 1:
            raise ValueError(f"conv {path!r} is already grouped ({conv.groups} groups); only standard convolutions are replaced")
        problem = None
        if self.kind == "G" and conv.in_channels % self.groups:
            problem = f"groups must divide its {conv.in_channels} input channels"
        elif self.kind in ("B", "BG"):
            width, remainder = divmod(conv.out_channels, self.bottleneck)
            if remainder or width == 0:
                problem = f"the bottleneck factor must divide its {conv.out_channels} output channels"
            elif self.kind == "BG" and width % self.groups:
                problem = f"groups must divide its bottleneck width of {width} channels ({conv.out_channels} / {self.bottleneck})"
        if problem:
            raise ValueError(
                f"block spec {self} cannot replace conv {path!r} with {conv.in_channels} input and "
                f"{conv.out_channels} output channels: {problem}"
            )

    def build(self, conv: nn.Conv2d, path: str = "conv") -> nn.Module:
        """The cheap module that takes ``conv``'s place (``conv`` itself for ``S``)."""
        self.check(conv, path)
        if self.kind == "S":
            return conv
        if self.kind == "DW":
            return GroupedSeparableConv(conv, groups=conv.in_channels)
        if self.kind == "G":
            return GroupedSeparableConv(conv, groups=self.groups)
        return BottleneckConv(conv, bottleneck=self.bottleneck, groups=self.groups)


def parse_block_spec(spec: str | BlockSpec) -> BlockSpec:
    """``"G(4)"`` -> ``BlockSpec("G", groups=4)``; unknown text fails with the notation's help."""
    if isinstance(spec, BlockSpec):
        return spec
    match = _SPEC.match(str(spec))
    if not match:
        raise ValueError(f"unknown block spec {spec!r}: {SPEC_HELP}")
    if match["plain"]:
        return BlockSpec(match["plain"].upper())
    if match["short"]:
        kind, first, second = match["short"].upper(), int(match["c"]), match["d"]
    else:
        kind, first, second = match["kind"].upper(), int(match["a"]), match["b"]
    if (kind == "BG") != (second is not None):
        raise ValueError(f"unknown block spec {spec!r}: {SPEC_HELP}")
    if first < 1 or (second is not None and int(second) < 1):
        raise ValueError(f"block spec {spec!r} needs factors of at least 1: {SPEC_HELP}")
    if kind == "G":
        return BlockSpec("G", groups=first)
    if kind == "B":
        return BlockSpec("B", bottleneck=first)
    return BlockSpec("BG", bottleneck=first, groups=int(second))
