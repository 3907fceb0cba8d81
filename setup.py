"""Builds only the native kernel extension; all metadata lives in pyproject.toml."""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext = Pybind11Extension(
    "modelstore._native",
    sorted(glob("csrc/**/*.cpp", recursive=True)),
    include_dirs=["csrc"],
    cxx_std=17,
    define_macros=[("VERSION_INFO", '"0.1.0"')],
    # Portable by default; MODELSTORE_NATIVE_ARCH=1 is not read here on purpose:
    # wheels must run on any x86-64/aarch64 machine.
    extra_compile_args=["-O3", "-fvisibility=hidden"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
