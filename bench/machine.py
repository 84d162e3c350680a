"""What the figures were measured on."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys


def _cmd(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (p.stdout or p.stderr).strip()
    except OSError:
        return "?"


def _dpkg(pkg: str) -> str:
    return _cmd(["dpkg-query", "-W", "-f", "${Version}", pkg]) or "?"


def describe() -> dict[str, str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            cpu = m.group(1) if m else "?"
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024 // 1024} GiB"
    except (OSError, ValueError, IndexError):
        pass
    from importlib.metadata import version

    import cffi
    import PyKCS11  # noqa: F401

    osname = "?"
    try:
        with open("/etc/os-release") as f:
            m = re.search(r'PRETTY_NAME="(.*)"', f.read())
            osname = m.group(1) if m else "?"
    except OSError:
        pass
    return {
        "host": f"{osname}, kernel {platform.release()}, {os.cpu_count()} CPUs ({cpu}), {mem} RAM",
        "python": sys.version.split()[0] + f" (cffi {cffi.__version__}, PyKCS11 {version('pykcs11')})",
        "softhsm2": _dpkg("softhsm2"),
        "opensc (pkcs11-spy)": _dpkg("opensc-pkcs11"),
        "gcc": _cmd(["gcc", "-dumpfullversion"]),
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
