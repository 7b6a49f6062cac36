"""The C++ kernel paths against the scalar kernels, and the pybind-free engine core on every path, natively
and (NEON) cross-compiled under qemu-user."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

SOURCES = ROOT / "lightning_edge" / "runtime" / "csrc"
HARNESS = ROOT / "tests" / "native" / "check_kernels.cpp"
# Every C++ file but the Python bindings: the kernels, the engine core and each op's registered file.
CORE_FILES = sorted(str(path) for path in SOURCES.glob("*.cpp") if path.name != "bindings.cpp")
FLAGS = ["-O2", "-std=c++17", "-ffp-contract=off", "-pthread", f"-I{SOURCES}"]


def build_and_run(compiler: str, output: Path, runner: list[str], extra: list[str]) -> str:
    subprocess.run([compiler, *FLAGS, *extra, str(HARNESS), *CORE_FILES, "-o", str(output)], check=True,
                   capture_output=True, text=True)
    result = subprocess.run([*runner, str(output)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_native_kernel_paths_match_scalar(tmp_path):
    out = build_and_run("g++", tmp_path / "check", [], [])
    assert "400 random convolutions" in out and out.count(": 0 mismatches") == 2
    assert "engine plan (7 op kinds) on scalar" in out


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                    reason="needs Debian's g++-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them as root)")
def test_neon_kernels_match_scalar_under_qemu(tmp_path):
    out = build_and_run("aarch64-linux-gnu-g++", tmp_path / "check_arm", ["qemu-aarch64"], ["-static"])
    assert "scalar, neon: 0 mismatches" in out and "engine plan (7 op kinds) on scalar, neon: 0 mismatches" in out
