"""Builds the INT8 runtime's C++ kernels (lightning_edge.runtime._engine) during `pip install`.

Everything else is in pyproject.toml. Flags that matter for exactness: -ffp-contract=off (no fused
multiply-add may change a float32 rounding the spec fixes). The AVX2 file enables AVX2 for itself
with a pragma, so the module still loads on CPUs without it and picks the scalar kernels at run time.
Set LIGHTNING_EDGE_SANITIZE=address to build with AddressSanitizer (docs/runtime.md).
"""
import os
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

compile_args = ["-O3", "-ffp-contract=off", "-fno-strict-aliasing"]
link_args = ["-pthread"]
sanitizer = os.environ.get("LIGHTNING_EDGE_SANITIZE")
if sanitizer:
    compile_args += [f"-fsanitize={sanitizer}", "-fno-omit-frame-pointer", "-g"]
    link_args += [f"-fsanitize={sanitizer}"]

engine = Pybind11Extension(
    "lightning_edge.runtime._engine",
    sorted(glob("lightning_edge/runtime/csrc/*.cpp")),
    depends=sorted(glob("lightning_edge/runtime/csrc/*.h")),
    cxx_std=17,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(ext_modules=[engine], cmdclass={"build_ext": build_ext})
