"""The C++ kernel paths against the scalar kernels, and the pybind-free engine core on every path, natively
and (NEON) cross-compiled under qemu-user; the two builds' digests of every tensor of the engine plan and of
the float64 functions the float ops use must be identical (another libm, another CPU's conversions)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

SOURCES = ROOT / "lightning_edge" / "runtime" / "csrc"
HARNESS = ROOT / "tests" / "native" / "check_kernels.cpp"
POOL_STRESS = ROOT / "tests" / "native" / "check_thread_pool.cpp"
# Every C++ file but the Python bindings: the kernels, the engine core and each op's registered file.
CORE_FILES = sorted(str(path) for path in SOURCES.glob("*.cpp") if path.name != "bindings.cpp")
FLAGS = ["-O2", "-std=c++17", "-ffp-contract=off", "-pthread", f"-I{SOURCES}"]
# The op kinds the sources register: the harness's plan must use each of them.
KINDS = sum(path.read_text().count("EDGE_REGISTER_OP(\"") for path in SOURCES.glob("op_*.cpp"))
NEEDS_CROSS = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                                 reason="needs Debian's g++-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them as root)")


def build_and_run(compiler: str, output: Path, runner: list[str], extra: list[str]) -> str:
    subprocess.run([compiler, *FLAGS, *extra, str(HARNESS), *CORE_FILES, "-o", str(output)], check=True,
                   capture_output=True, text=True)
    result = subprocess.run([*runner, str(output)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def digests(out: str) -> dict[str, str]:
    """The harness's "tensor <i> <hex>", "output <hex>" (each also of the FP32 plan, "float ...") and
    "function <name> <hex>" lines, by name."""
    return {m[1]: m[2] for m in re.finditer(r"^((?:(?:float )?tensor \d+|(?:float )?output(?: \d+)?|function \S+)) ([0-9a-f]{16})$",
                                             out, re.M)}


@pytest.fixture(scope="module")
def native_output(tmp_path_factory) -> str:
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    return build_and_run("g++", tmp_path_factory.mktemp("native") / "check", [], [])


def test_native_kernel_paths_match_scalar(native_output):
    out = native_output
    assert "400 random convolutions" in out and out.count(": 0 mismatches") == 2
    assert f"engine plan ({KINDS} op kinds) on scalar" in out
    assert len(digests(out)) > KINDS


@NEEDS_CROSS
def test_neon_kernels_match_scalar_under_qemu(native_output, tmp_path):
    out = build_and_run("aarch64-linux-gnu-g++", tmp_path / "check_arm", ["qemu-aarch64"], ["-static"])
    assert "scalar, neon: 0 mismatches" in out and f"engine plan ({KINDS} op kinds) on scalar, neon: 0 mismatches" in out
    assert "fp16 half arithmetic: neon" in out  # fp16_conv ran NEON's vfma of halves, and matched the exact form
    native, arm = digests(native_output), digests(out)
    assert native.keys() == arm.keys()
    differing = [name for name in native if native[name] != arm[name]]
    assert not differing, f"aarch64 computes other bits than x86 for: {', '.join(differing)}"


@pytest.mark.parametrize("threads, spin, sharing", [(2, 20000, 0), (2, 0, 0), (3, 100, 1), (5, 20000, 0), (5, 20000, 1),
                                                    (3, 20000, 2), (5, 100, 2)])
def test_thread_pool_runs_every_chunk_once_when_crowded(threads, spin, sharing, tmp_path):
    """The pool's chunk claims (one compare-and-swap on the call's generation, chunk count and next chunk)
    under 300,000 calls; with more threads than cores the OS deschedules workers mid-claim. An earlier
    version read the count apart from the claim word and hung here within a second."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    binary = tmp_path / "check_pool"
    subprocess.run(["g++", *FLAGS, str(POOL_STRESS), "-o", str(binary)], check=True, capture_output=True, text=True)
    result = subprocess.run([str(binary), str(threads), str(spin), str(sharing), "300000"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "each exactly once" in result.stdout
