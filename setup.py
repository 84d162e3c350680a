"""Builds the PKCS#11 module: a C loader stub and the cffi-embedded Python core."""

import os
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
from shim import _build  # noqa: E402

GEN = os.path.join("build", "sc4gen")
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
LIBDIR = sysconfig.get_config_var("LIBDIR")
LIBPYTHON, LIBPYTHON_SONAME = _build.libpython()


class BuildModule(build_ext):
    """Names the stub ``libsc4dnssec.so``: it is a PKCS#11 module, not a Python extension."""

    def get_ext_filename(self, fullname: str) -> str:
        parts = fullname.split(".")
        if parts[-1] == "libsc4dnssec":
            return os.path.join(*parts[:-1], _build.STUB_NAME)
        return super().get_ext_filename(fullname)


def _relative(paths: list[str]) -> list[str]:
    return [os.path.relpath(p, ROOT) for p in paths]


core_sources, stub_sources = _build.generate(Path(ROOT) / GEN)
include_dirs = [os.path.join("shim", "c"), GEN]
setup(
    cmdclass={"build_ext": BuildModule},
    ext_modules=[
        Extension(
            "shim." + _build.CORE_MODULE,
            sources=_relative(core_sources),
            include_dirs=include_dirs,
            libraries=[f"python{sysconfig.get_config_var('LDVERSION')}", "dl", "pthread"],
            library_dirs=[LIBDIR],
            extra_link_args=[f"-Wl,-rpath,{LIBDIR}"],
            py_limited_api=False,
        ),
        Extension(
            "shim.libsc4dnssec",
            sources=_relative(stub_sources),
            include_dirs=include_dirs,
            libraries=["dl", "pthread"],
            define_macros=[
                ("SC4_CORE_NAME", f'"{_build.CORE_MODULE}{EXT_SUFFIX}"'),
                ("SC4_LIBPYTHON", f'"{LIBPYTHON}"'),
                ("SC4_LIBPYTHON_SONAME", f'"{LIBPYTHON_SONAME}"'),
            ],
        ),
    ],
)
