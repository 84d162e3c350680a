"""Builds the PKCS#11 module: a C loader stub and the cffi-embedded Python core."""

import os
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shim import _build  # noqa: E402

GEN = os.path.join("build", "sc4gen")
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
LIBDIR = sysconfig.get_config_var("LIBDIR")
LIBPYTHON, LIBPYTHON_SONAME = _build.libpython()


def generate() -> tuple[str, str]:
    os.makedirs(GEN, exist_ok=True)
    core_c = os.path.join(GEN, _build.CORE_MODULE + ".c")
    _build.core_ffi().emit_c_code(core_c)
    stub_c = os.path.join(GEN, "sc4_stub.c")
    with open(stub_c, "w") as f:
        f.write(_build.stub_source())
    return core_c, stub_c


class BuildModule(build_ext):
    """Names the stub ``libsc4dnssec.so``: it is a PKCS#11 module, not a Python extension."""

    def get_ext_filename(self, fullname: str) -> str:
        parts = fullname.split(".")
        if parts[-1] == "libsc4dnssec":
            return os.path.join(*parts[:-1], _build.STUB_NAME)
        return super().get_ext_filename(fullname)


core_c, stub_c = generate()
setup(
    cmdclass={"build_ext": BuildModule},
    ext_modules=[
        Extension(
            "shim." + _build.CORE_MODULE,
            sources=[core_c],
            include_dirs=["shim/c"],
            libraries=[f"python{sysconfig.get_config_var('LDVERSION')}", "dl"],
            library_dirs=[LIBDIR],
            extra_link_args=[f"-Wl,-rpath,{LIBDIR}"],
            py_limited_api=False,
        ),
        Extension(
            "shim.libsc4dnssec",
            sources=[stub_c],
            include_dirs=["shim/c"],
            libraries=["dl", "pthread"],
            define_macros=[
                ("SC4_CORE_NAME", f'"{_build.CORE_MODULE}{EXT_SUFFIX}"'),
                ("SC4_LIBPYTHON", f'"{LIBPYTHON}"'),
                ("SC4_LIBPYTHON_SONAME", f'"{LIBPYTHON_SONAME}"'),
            ],
        ),
    ],
)
