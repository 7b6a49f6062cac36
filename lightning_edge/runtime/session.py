"""Load a .edge file and run it: ``load(path, threads=None) -> Session``; ``Session.run(x) -> np.ndarray`` (a list
of arrays in graph output order for a model with several outputs; ``run(x, as_dict=True)``: a dict by output name;
several inputs as a list in graph input order or a dict by input name).

numpy and the compiled kernels only (no torch, no onnx). The .edge container is checked by
``edge_format.read_edge``; the plan inside it is then checked field by field (``plan.Plan.from_dict``) and
again op by op by the engine (every tensor index, size, array dtype and length) before anything runs, so a
bad file is a Python exception, never a crash.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from lightning_edge.runtime.edge_format import EdgeFormatError, read_edge
from lightning_edge.runtime.native import KERNELS, default_threads, engine_module, resolve_kernels
from lightning_edge.runtime.packing import kernel_arrays
from lightning_edge.runtime.plan import INPUT_KINDS, Plan, PlanError


# shared_cpu= as the engine's CpuSharing: False dedicated, True shared, None automatic.
_SHARING = {False: 0, True: 1, None: 2}
_POLICY = {sharing: policy for policy, sharing in _SHARING.items()}


class Session:
    """A loaded plan bound to a thread pool and a kernel path; run it on float32 NCHW batches of any size."""

    def __init__(self, plan: Plan | dict[str, Any], tensors: dict[str, np.ndarray], threads: int | None = None,
                 kernels: str = "auto", path: str = "<plan>", spin: int | None = None,
                 shared_cpu: bool | None = None):
        if kernels not in KERNELS:
            raise ValueError(f"kernels={kernels!r}: choose one of {', '.join(KERNELS)}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads={threads!r}: give a positive number of threads, or None for all cores")
        if spin is not None and (not isinstance(spin, int) or isinstance(spin, bool) or spin < 0):
            raise ValueError(f"spin={spin!r}: give how many pause instructions an idle worker spins before it sleeps "
                             "(0: sleep at once), or None for the default")
        if shared_cpu is not None and not isinstance(shared_cpu, bool):
            raise TypeError(f"shared_cpu={shared_cpu!r}: give True, False, or None to follow what the pool sees")
        try:
            plan = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
        except PlanError as error:
            raise EdgeFormatError(path, f"its plan is inconsistent ({error})") from None
        self.path, self.plan, self.tensors = path, plan, tensors
        module = engine_module()
        resolved = resolve_kernels(kernels)  # a path this CPU or build lacks is a ValueError: the file is fine
        try:
            ops, arrays = kernel_arrays(plan, tensors, resolved)
            sizes = [tensor.bytes_per_sample for tensor in plan.tensors]
            pool = {"sharing": _SHARING[shared_cpu]} if spin is None else {"spin": spin, "sharing": _SHARING[shared_cpu]}
            self._engine = module.Engine(ops, sizes, arrays, threads or default_threads(), resolved, **pool)
            ends = sorted((op for op in plan.ops if op.KIND in INPUT_KINDS), key=lambda op: op.index)
            self.input_shapes = [(op.channels, op.height, op.width) for op in ends]
            self.input_shape = self.input_shapes[0]  # the first input's (C, H, W)
            if self._engine.output_count != len(plan.outputs) or self._engine.input_count != len(plan.inputs):
                raise ValueError(f"the plan names {len(plan.inputs)} inputs and {len(plan.outputs)} outputs, its ops read "
                                 f"{self._engine.input_count} and write {self._engine.output_count}")
            if [list(shape) for shape in self.input_shapes] != [list(entry["shape"]) for entry in plan.inputs]:
                raise ValueError(f"input shapes {[entry['shape'] for entry in plan.inputs]} are not the input ops' "
                                 f"{[list(shape) for shape in self.input_shapes]}")
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError, ArithmeticError, AttributeError) as error:
            raise EdgeFormatError(path, f"its plan is inconsistent ({error})") from error

    @property
    def kernels(self) -> str:
        """The kernel path in use: 'avx512', 'avx2', 'neon' or 'scalar'."""
        return self._engine.backend

    @property
    def threads(self) -> int:
        return self._engine.threads

    @property
    def spin(self) -> int:
        """How many pause instructions an idle worker spins before it sleeps (0: it sleeps at once)."""
        return self._engine.spin

    @property
    def shared_cpu(self) -> bool | None:
        """The policy asked for: True (always act as if other busy processes share the CPU), False (never), None
        (while the pool sees contention: see ``cpu_contended``)."""
        return _POLICY[self._engine.sharing]

    @property
    def batch_group(self) -> int:
        """Samples per batch group (default 2). A batch of at least that many samples per thread is cut into
        groups that the threads claim and run through the whole plan alone, each in its own buffers: no
        hand-over between ops, and each core keeps its group's tensors in its cache. 0 runs every batch op by
        op, each op's work shared by all threads (what a smaller batch always does). The numbers are the same."""
        return self._engine.batch_group

    @batch_group.setter
    def batch_group(self, samples: int) -> None:
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise ValueError(f"batch_group={samples!r}: give a number of samples per group, or 0 to run op by op")
        self._engine.batch_group = samples

    @property
    def fusion(self) -> bool:
        """Whether ``run`` computes each inverted-residual block (1x1 expansion, depthwise, 1x1 projection with
        its residual add) fused, strip by strip of rows, so its expanded tensors stay in the core's cache (on by
        default; the int16 pairs paths, scalar, AVX2 and NEON, where the block's depthwise output has at least 8
        rows per thread; VNNI's u8 x s8 convs are not fused yet). The codes are
        the unfused plan's, bit for bit; ``trace`` and ``profile`` always run op by op."""
        return self._engine.fusion

    @fusion.setter
    def fusion(self, on: bool) -> None:
        if not isinstance(on, bool):
            raise ValueError(f"fusion={on!r}: give True or False")
        self._engine.fusion = on

    @property
    def fused_blocks(self) -> int:
        """How many blocks ``run`` computes fused (see ``fusion``)."""
        return self._engine.fused_blocks

    @property
    def cpu_contended(self) -> bool:
        """Whether the pool acts now as if other busy processes share the CPU: always with ``shared_cpu=True``,
        never with False, and with None from three signs of contention in quick succession (a woken worker that
        did not start in time, or one descheduled while it held work) until half a second passes without one."""
        return self._engine.contended

    @property
    def input_names(self) -> list[str]:
        """The model's inputs, in graph input order (how ``run`` takes a list of them)."""
        return self.plan.input_names

    @property
    def output_names(self) -> list[str]:
        """The model's outputs, in graph output order (what ``run`` returns them in)."""
        return self.plan.output_names

    def run(self, x: np.ndarray, as_dict: bool = False) -> np.ndarray | list[np.ndarray] | dict[str, np.ndarray]:
        """float32 (batch, C, H, W) in (for a model with several inputs, a list in graph input order or a dict by input
        name, all of one batch size); out, each output in float32 as (batch, classes) or (batch, C, H, W): the one
        array of a one-output model, else a list in graph output order; with ``as_dict``, a dict by output name."""
        return self._outputs(self._engine.run(self._checked(x)), as_dict)

    def _outputs(self, arrays: list[np.ndarray], as_dict: bool) -> Any:
        if as_dict:
            return dict(zip(self.output_names, arrays))
        return arrays[0] if len(arrays) == 1 else list(arrays)

    def profile(self, x: np.ndarray, repeats: int = 10) -> list[float]:
        """Median seconds of each plan op inside ``repeats`` whole runs of ``x`` (after a warm-up run)."""
        return list(self._engine.profile(self._checked(x), repeats))

    def trace(self, x: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        """Output (as ``run`` returns it) plus every tensor the plan stores, by its ONNX name (the QuantizeLinear output), NCHW: uint8 codes
        (those of int8-activation files shifted by +128, the runtime's uint8 form), and float32 values of float regions
        (a tensor stored as bfloat16 widened to float32)."""
        x = self._checked(x)
        outputs, codes = self._engine.trace(x)
        output = self._outputs(outputs, False)
        tensors = {}
        batch = len(x[0])
        for info, flat in zip(self.plan.tensors, codes):
            if flat is None:
                continue
            shape = info.shape
            if info.dtype == "f32":
                tensors[info.name] = flat.view(np.float32).reshape(batch, *shape)
            elif info.dtype == "bf16":  # channel pairs: (C / 2, H, W) words, channel 2i in the low half
                channels, height, width = shape[-3:]
                halves = flat.view(np.uint16).reshape(batch, channels // 2, height, width, 2).transpose(0, 1, 4, 2, 3)
                bits = halves.astype(np.uint32) << np.uint32(16)
                tensors[info.name] = bits.view(np.float32).reshape(batch, *shape)
            elif len(shape) == 3:
                tensors[info.name] = flat.reshape(batch, shape[1], shape[2], shape[0]).transpose(0, 3, 1, 2)
            else:
                tensors[info.name] = flat.reshape(batch, -1)
        return output, tensors

    def _checked(self, x: Any) -> list[np.ndarray]:
        """The inputs as float32 C-order batches, one per plan input in order (an array, a list, or a dict by name)."""
        names = self.input_names
        if isinstance(x, dict):
            if sorted(x) != sorted(names):
                raise ValueError(f"inputs {sorted(x)}: this model takes {names}")
            x = [x[name] for name in names]
        elif len(names) == 1 and not (isinstance(x, (list, tuple)) and len(x) == 1 and isinstance(x[0], np.ndarray)):
            x = [x]
        elif not isinstance(x, (list, tuple)) or len(x) != len(names):
            raise ValueError(f"this model takes {len(names)} inputs ({', '.join(names)}): give a list in that order or a "
                             "dict by name")
        return [self._checked_one(value, shape, name) for value, shape, name in zip(x, self.input_shapes, names)]

    @staticmethod
    def _checked_one(x: Any, shape: tuple[int, int, int], name: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"input {name!r} of shape {tuple(x.shape)}: this model takes float32 (batch, "
                             f"{', '.join(map(str, shape))})")
        if x.shape[0] == 0:
            raise ValueError("input batch is empty")
        return np.ascontiguousarray(x, dtype=np.float32)

    def __repr__(self) -> str:
        return f"Session({self.path!r}, kernels={self.kernels!r}, threads={self.threads})"


def load(edge_path: str | os.PathLike, threads: int | None = None, kernels: str = "auto",
         spin: int | None = None, shared_cpu: bool | None = None) -> Session:
    """Load a .edge file (checked before use). ``threads=None`` uses all cores; ``kernels`` forces a path.

    The threads share each op's work in small chunks that whichever thread is free claims, so a thread the OS
    deschedules (another busy process on the core) delays only the chunk it holds. Between runs a worker spins
    ``spin`` pause instructions (None: the default, under a millisecond) before it sleeps; ``spin=0`` sleeps
    at once. On a CPU that other busy processes share (a phone, a board running a camera pipeline) the pool
    changes policy: the caller stops waiting for a worker the OS has descheduled, and spinning workers give
    their core away now and then. By default (``shared_cpu=None``) it does so while it sees contention, from
    three signs in quick succession until half a second passes without one; ``shared_cpu=True`` keeps that policy always,
    ``False`` never (scripts/bench_load.py measures all three)."""
    path = os.fspath(edge_path)
    plan, tensors = read_edge(path)
    return Session(plan, tensors, threads=threads, kernels=kernels, path=path, spin=spin, shared_cpu=shared_cpu)
