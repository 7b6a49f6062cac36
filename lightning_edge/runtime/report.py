"""What a compiled plan does, layer by layer: the table ``lightning-edge inspect`` prints."""
from __future__ import annotations

from typing import Any

import numpy as np

from lightning_edge.runtime.edge_format import stored_bytes
from lightning_edge.runtime.plan import Plan


def layer_rows(plan: Plan, tensors: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per op: kind, the ONNX nodes it fuses, the kernel chosen, output shape, MACs, weight bytes dense
    and as the file stores them (pruned int8 weights compressed), and the weights' sparsity."""
    rows = []
    for op in plan.ops:
        output = plan.tensors[op.writes()].shape if op.writes() is not None else plan.output_shape
        arrays = [tensors[name] for name in op.arrays().values() if name in tensors]
        weights = tensors.get(op.arrays().get("weights"))
        rows.append({
            "id": op.id, "op": op.kind, "fuses": op.fuses,
            "kernel": getattr(op, "primitive", None) or "-", "output": output, "macs": int(getattr(op, "macs", 0)),
            "bytes": sum(int(array.nbytes) for array in arrays),
            "stored_bytes": sum(stored_bytes(array) for array in arrays),
            "sparsity": float(np.mean(weights == 0)) if weights is not None and weights.size else 0.0,
            "timings_us": getattr(op, "timings_us", None) or {},
            "residual": getattr(op, "skip", None) is not None,
        })
    return rows


def layer_table(plan: Plan, rows: list[dict[str, Any]]) -> str:
    header = f"{'op':>5}  {'kind':12} {'fuses':28} {'kernel':22} {'output':>14} {'MMACs':>8} {'KiB':>8} {'stored':>8} {'zeros':>6}  candidates (us)"
    lines = [f"{plan.source}: {len(rows)} ops", header, "-" * len(header)]
    for row in rows:
        shape = "x".join(map(str, row["output"]))
        timings = ", ".join(f"{name} {us:g}" for name, us in row["timings_us"].items()) if len(row["timings_us"]) > 1 else ""
        lines.append(f"{row['id']:>5}  {row['op']:12} {row['fuses'][:28]:28} {row['kernel']:22} {shape:>14} "
                     f"{row['macs'] / 1e6:8.2f} {row['bytes'] / 1024:8.1f} {row['stored_bytes'] / 1024:8.1f} "
                     f"{row['sparsity']:6.1%}  {timings}")
    total_macs = sum(row["macs"] for row in rows)
    total_bytes = sum(row["bytes"] for row in rows)
    total_stored = sum(row["stored_bytes"] for row in rows)
    selection = plan.selection
    lines.append(f"total: {total_macs / 1e6:.1f} MMACs per image, {total_bytes / 1024:.1f} KiB of arrays (weights, tables, indices) dense, "
                 f"{total_stored / 1024:.1f} KiB stored"
                 + (f"; kernels timed at batch {selection['batch']} with {selection['threads']} threads "
                    f"({selection['kernels']}, {selection['machine']})" if selection else ""))
    return "\n".join(lines)
