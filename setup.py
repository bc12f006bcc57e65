"""Build script: maps the top-level ``kernels/`` folder to ``inform_fast.kernels`` and builds the
optional C++ extension ``inform_fast._C`` from ``csrc/``.

Set ``INFORM_FAST_BUILD_CPP=0`` to skip the extension. A failed extension build never fails the
install: everything has a PyTorch path, and ``inform_fast.cpp_extension_status()`` says why the
extension is missing.
"""
import glob
import os

from setuptools import find_packages, setup

ext_modules = []
if os.environ.get("INFORM_FAST_BUILD_CPP", "1") != "0" and glob.glob("csrc/*.cpp"):
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:  # pybind11 missing outside an isolated build: skip, the fallback works
        Pybind11Extension = None
    if Pybind11Extension is not None:
        ext_modules.append(
            Pybind11Extension(
                "inform_fast._C",
                sorted(glob.glob("csrc/*.cpp")),
                include_dirs=["csrc"],
                depends=sorted(glob.glob("csrc/*.h")),  # rebuilt when a header changes
                cxx_std=17,
                extra_compile_args=["-O3", "-fopenmp"],
                extra_link_args=["-fopenmp"],
                optional=True,
            )
        )

packages = find_packages(include=["inform_fast", "inform_fast.*"]) + ["inform_fast.kernels"]

setup(
    packages=packages,
    package_dir={"inform_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    zip_safe=False,
)
