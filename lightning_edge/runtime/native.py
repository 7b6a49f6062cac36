"""The compiled kernels (``_engine``) and what this CPU offers, detected once per process. numpy only."""
from __future__ import annotations

import functools
import os
from typing import Any

KERNELS = ("auto", "avx512", "avx2", "neon", "scalar")


@functools.lru_cache(maxsize=None)
def engine_module() -> Any:
    """The compiled extension, or an ImportError that says how to build it."""
    try:
        from lightning_edge.runtime import _engine
    except ImportError as error:
        raise ImportError("lightning_edge.runtime's kernels are not built: run `pip install -e .` in the repository "
                          f"(it compiles lightning_edge/runtime/csrc with g++) ({error})") from error
    return _engine


def available_kernels() -> list[str]:
    """Kernel paths this build and CPU can run, e.g. ['scalar', 'avx2', 'avx512']."""
    return list(_detected_kernels())


@functools.lru_cache(maxsize=None)
def _detected_kernels() -> tuple[str, ...]:
    return tuple(engine_module().available_kernels())


@functools.lru_cache(maxsize=None)
def resolve_kernels(kernels: str = "auto") -> str:
    """The path ``kernels`` ('auto' included) runs on this CPU; a ValueError names what this CPU lacks."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r}: choose one of {', '.join(KERNELS)}")
    return engine_module().resolve_kernels(kernels)


@functools.lru_cache(maxsize=None)
def cpu_flags() -> tuple[str, ...]:
    """The CPU flags the kernels care about that this machine reports (what every benchmark prints)."""
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "asimd", "fphp", "asimdhp")
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("flags", "features")):
                    present = set(line.split(":", 1)[1].split())
                    return tuple(flag for flag in wanted if flag in present)
    except OSError:
        pass
    return ()


def default_threads() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
