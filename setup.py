"""Builds the optional C++ kernels of the pair list (hsa_geo/csrc).

They need a C++ compiler and Python's headers, nothing else (no PyTorch
headers). Where they do not build, the install goes on without them and the
attention runs the same computation as PyTorch operations. On x86-64 a
second build uses AVX2 and FMA; the package loads it where PyTorch reports
those instructions (hsa_geo/functional/fused_pair_kernels.py)."""
import functools
import platform
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = 'hsa_geo/csrc/pair_kernels.cpp'
# -fno-trapping-math: the exp of a row vectorises (no trap handler is ever
# installed); -fopenmp-simd: the loops' simd pragmas, without OpenMP.
FLAGS = ['-O3', '-std=c++14', '-fopenmp-simd', '-fno-trapping-math']


def kernels(name: str, flags: list) -> Extension:
    return Extension(f'hsa_geo.{name}', [SOURCE], language='c++',
                     extra_compile_args=FLAGS + flags,
                     define_macros=[('HSA_MODULE', name)], optional=True)


@functools.lru_cache(maxsize=None)  # asked once for both builds
def is_gcc(compiler: str) -> bool:
    try:
        out = subprocess.run([compiler, '--version'], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    return 'Free Software Foundation' in out and 'clang' not in out


class BuildKernels(build_ext):
    r"""With GCC, the kernels split their rows among OpenMP threads: GCC's
    libgomp is the runtime PyTorch's Linux wheels load (``libgomp.so.1``),
    so the kernels use PyTorch's own thread team rather than start a second
    one. With another compiler they build without threads."""

    def build_extension(self, ext: Extension) -> None:
        if is_gcc(self.compiler.compiler_so[0]):
            ext.extra_compile_args = ext.extra_compile_args + ['-fopenmp']
            ext.extra_link_args = ext.extra_link_args + ['-fopenmp']
        super().build_extension(ext)


modules = [kernels('_pair_kernels', [])]
if platform.machine().lower() in ('x86_64', 'amd64'):
    modules.append(kernels('_pair_kernels_avx2', ['-mavx2', '-mfma']))

setup(ext_modules=modules, cmdclass={'build_ext': BuildKernels})
