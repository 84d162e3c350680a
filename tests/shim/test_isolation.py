"""The embedded interpreter is the shim's own: a hostile environment cannot run code in it, break
its start, kill the host, change the host's locale, or hang a child the host forks.

Every host here is C (tests/shim/hostile_host.c) or pkcs11-tool: a Python host would bring its
own, already started, interpreter.  The hostile environments come from issue 12 items 3-5.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shim._build import function_list_struct

HERE = Path(__file__).resolve().parent
PY_VER = f"python{sys.version_info.major}.{sys.version_info.minor}"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# Only when what the module runs is unreadable for nobody (a pyenv tree under /root, tox's 0700
# .tox holding the venv): nobody may then read (not write) root's files.  uid and gid stay nobody's, and they are
# what decides whether Python would enable a user site directory.
READ_ANYTHING = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
START_OK = "init=0x0 info=0x0 slots=0x0 final=0x0"


@pytest.fixture(scope="session")
def hostile_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile_host")
    (d / "function_list.h").write_text(function_list_struct())
    exe = d / "hostile_host"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(HERE / "hostile_host.c"), f"-I{d}",
                    f"-I{HERE.parent.parent / 'shim' / 'c'}", "-ldl", "-lpthread"], check=True)
    return exe


@pytest.fixture(scope="session")
def as_nobody(hostile_host: Path) -> list[str]:
    from shim import _build
    from shim.locate import module_path

    needed = [_build.libpython()[0], module_path(), str(Path(sysconfig.get_paths()["purelib"]) / "cffi")]
    probe = AS_NOBODY + ["sh", "-c", 'for f; do test -r "$f" || exit 1; done', "sh", *needed]
    return AS_NOBODY if subprocess.run(probe).returncode == 0 else AS_NOBODY + READ_ANYTHING


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory both root and nobody can write (markers, the audit log)."""
    d = Path(tempfile.mkdtemp(prefix="sc4-isolation-"))
    d.chmod(0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _planter(marker: Path, tag: str) -> str:
    """Python source that leaves evidence it ran."""
    return f"open({str(marker)!r}, 'a').write({tag!r} + '\\n')\n"


def _user_site(base: Path) -> Path:
    site_dir = base / "lib" / PY_VER / "site-packages"
    site_dir.mkdir(parents=True)
    return site_dir


def _pythonpath(tmp: Path, marker: Path) -> dict[str, str]:
    d = tmp / "pythonpath"
    d.mkdir()
    (d / "sitecustomize.py").write_text(_planter(marker, "PYTHONPATH sitecustomize"))
    return {"PYTHONPATH": str(d)}


def _userbase(tmp: Path, marker: Path) -> dict[str, str]:
    site_dir = _user_site(tmp / "userbase")
    (site_dir / "evil.pth").write_text("import os; " + _planter(marker, "PYTHONUSERBASE .pth"))
    (site_dir / "usercustomize.py").write_text(_planter(marker, "PYTHONUSERBASE usercustomize"))
    return {"PYTHONUSERBASE": str(tmp / "userbase")}


def _home_user_site(tmp: Path, marker: Path) -> dict[str, str]:
    home = tmp / "home"
    site_dir = _user_site(home / ".local")
    (site_dir / "evil.pth").write_text("import os; " + _planter(marker, "HOME .pth"))
    (site_dir / "usercustomize.py").write_text(_planter(marker, "HOME usercustomize"))
    return {"HOME": str(home)}


def _startup(tmp: Path, marker: Path) -> dict[str, str]:
    f = tmp / "startup.py"
    f.write_text(_planter(marker, "PYTHONSTARTUP"))
    return {"PYTHONSTARTUP": str(f), "PYTHONINSPECT": "1"}


def _fake_python_on_path(tmp: Path, marker: Path) -> dict[str, str]:
    """A pyenv-like tree early in PATH whose standard library plants a marker in ``encodings``."""
    prefix = tmp / "fakepy"
    (prefix / "bin").mkdir(parents=True)
    lib = prefix / "lib" / PY_VER
    lib.mkdir(parents=True)
    for entry in STDLIB.iterdir():
        if entry.name not in ("encodings", "site-packages", "__pycache__"):
            (lib / entry.name).symlink_to(entry)
    shutil.copytree(STDLIB / "encodings", lib / "encodings", ignore=shutil.ignore_patterns("__pycache__"))
    init = lib / "encodings" / "__init__.py"
    init.write_text(_planter(marker, "stdlib from PATH") + init.read_text())
    for name in ("python3", PY_VER, "python"):
        exe = prefix / "bin" / name
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    return {"PATH": f"{prefix / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def _plain(**env: str) -> Callable[[Path, Path], dict[str, str]]:
    return lambda tmp, marker: dict(env)


# name -> builds the hostile environment (tmp dir, marker file) -> variables to set
HOSTILE: dict[str, Callable[[Path, Path], dict[str, str]]] = {
    "PYTHONPATH sitecustomize": _pythonpath,
    "PYTHONUSERBASE .pth and usercustomize": _userbase,
    "HOME user site .pth and usercustomize": _home_user_site,
    "PYTHONSTARTUP": _startup,
    "python3 tree early in PATH": _fake_python_on_path,
    "PYTHONHOME=/nonexistent": _plain(PYTHONHOME="/nonexistent"),
    "PYTHONMALLOC=bogus": _plain(PYTHONMALLOC="bogus"),
    "PYTHONHASHSEED=x": _plain(PYTHONHASHSEED="x"),
    "PYTHONUTF8=x": _plain(PYTHONUTF8="x"),
    "PYTHONIOENCODING=bogus": _plain(PYTHONIOENCODING="no-such-codec"),
    "PYTHONWARNINGS": _plain(PYTHONWARNINGS="error::NoSuchWarningCategory"),
    "PYTHONVERBOSE=1": _plain(PYTHONVERBOSE="1"),
    "PYTHONMALLOCSTATS=1": _plain(PYTHONMALLOCSTATS="1"),
    "PYTHONPLATLIBDIR": _plain(PYTHONPLATLIBDIR="../../../../../../../tmp"),
}

# What an honoured variable prints to stderr, or how a start that failed says so.
HONOURED = [
    "Fatal Python error",
    "Invalid -W option ignored",  # PYTHONWARNINGS parsed
    "# installing zipimport hook",  # PYTHONVERBOSE
    "Small block threshold",  # PYTHONMALLOCSTATS
    "failed to start",
    "Traceback",
]


@dataclass
class Hostile:
    env: dict[str, str]
    marker: Path

    def planted(self) -> str:
        return self.marker.read_text() if self.marker.exists() else ""


def _hostile(name: str, shim_env, tmp_path: Path, shared: Path) -> Hostile:
    marker = shared / "ran"
    env = dict(shim_env.env, SC4DNSSEC_AUDIT_LOG=str(shared / "audit.jsonl"))
    env.update(HOSTILE[name](tmp_path, marker))
    return Hostile(env, marker)


def _no_python_noise(stderr: str) -> None:
    for needle in HONOURED:
        assert needle not in stderr, stderr[-3000:]


def _private_softhsm(shared: Path) -> dict[str, str]:
    """An empty SoftHSM token directory nobody owns, as the backend: it starts for nobody too, and
    it is fork-safe (see the fork test)."""
    tokens = shared / "tokens"
    tokens.mkdir()
    os.chown(tokens, 65534, 65534)
    conf = shared / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    conf.chmod(0o644)
    return {"SOFTHSM2_CONF": str(conf), "SC4DNSSEC_CONF": "", "SC4DNSSEC_BACKEND": _softhsm()}


def _softhsm() -> str:
    from virtualcard.pytest_plugin import softhsm_module

    return softhsm_module()


@pytest.mark.parametrize("user", ["root", "nobody"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_python_environment_changes_nothing(shim_env, hostile_host, as_nobody, shared_dir, name, user):
    """Planted files live in a directory nobody can read too, so that the code would run for nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to run as root and as nobody)")
    trees = shared_dir / "trees"
    trees.mkdir(mode=0o755)
    host = shared_dir / "hostile_host"
    shutil.copy2(hostile_host, host)
    hostile = _hostile(name, shim_env, trees, shared_dir)
    argv = [str(host), shim_env.module, "start"]
    if user == "nobody":
        hostile.env.update(_private_softhsm(shared_dir))
        argv = as_nobody + argv
    proc = subprocess.run(argv, env=hostile.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"host died ({proc.returncode}):\n{proc.stderr[-3000:]}"
    assert proc.stdout.splitlines()[0] == START_OK, proc.stdout + proc.stderr[-3000:]
    assert hostile.planted() == "", f"code planted by {name} ran inside the host"
    _no_python_noise(proc.stderr)


def test_pkcs11_tool_under_every_hostile_variable_at_once(shim_env, tmp_path, shared_dir):
    marker = shared_dir / "ran"
    env = dict(shim_env.env, SC4DNSSEC_AUDIT_LOG=str(shared_dir / "audit.jsonl"))
    for i, build in enumerate(HOSTILE.values()):
        d = tmp_path / f"h{i}"
        d.mkdir()
        env.update(build(d, marker))
    proc = subprocess.run(["pkcs11-tool", "--module", shim_env.module, "-L"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert shim_env.card.token_label in proc.stdout
    assert not marker.exists(), marker.read_text()
    _no_python_noise(proc.stderr)


def test_start_leaves_the_host_locale_alone(shim_env, hostile_host, shared_dir):
    """The host never called setlocale(): LC_CTYPE stays what the backend alone leaves it (SoftHSM:
    "C"; OpenSC sets it from the environment itself), although the environment says C.UTF-8."""
    env = dict(shim_env.env, LANG="C.UTF-8", LC_ALL="C.UTF-8", LC_CTYPE="C.UTF-8",
               SC4DNSSEC_AUDIT_LOG=str(shared_dir / "audit.jsonl"))
    outputs = []
    for module in (shim_env.card.module, shim_env.module):
        proc = subprocess.run([str(hostile_host), module, "start"], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.splitlines())
    direct, through = outputs
    assert through == direct and through[0] == START_OK, (direct, through)
    if shim_env.card.kind.startswith("softhsm"):
        assert through[1] == "locale_before=C locale_after=C"


def test_interpreter_that_cannot_start_is_general_error_and_a_message(shim_env, hostile_host, shared_dir):
    """A broken standard library (here: ``encodings`` hidden under an empty tmpfs, in a private
    mount namespace) must not abort the host: every call answers CKR_GENERAL_ERROR and stderr says
    why."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    encodings = STDLIB / "encodings"
    script = f'mount -t tmpfs none "{encodings}" && exec "$@"'
    env = dict(shim_env.env, SC4DNSSEC_AUDIT_LOG=str(shared_dir / "audit.jsonl"))
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                           str(hostile_host), shim_env.module, "start"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"host died ({proc.returncode}):\n{proc.stderr[-3000:]}"
    assert proc.stdout.splitlines()[0] == "init=0x5 info=0x5 slots=0x5 final=0x5", proc.stdout + proc.stderr
    assert "Fatal Python error" not in proc.stderr
    assert re.search(r"smartcards4dnssec: the embedded Python failed to start: .*encoding", proc.stderr), proc.stderr


def test_threaded_host_forking_fifty_times_never_hangs_a_child(shim_env, hostile_host, shared_dir):
    """Two host threads stay inside the shim while the main thread forks; each child initialises
    and calls.  A child stuck for 30 s (the GIL held by a thread the child does not have) dies of
    SIGALRM and counts as hung; the harness timeout only stops a host that hangs itself.

    The backend is always SoftHSM, whatever --card says: OpenSC is not fork-safe behind threads
    (a child's C_Initialize finalises the inherited state and waits for OpenSC's own mutex, held
    by a parent thread that was inside a call), which is not the interpreter's doing."""
    audit = shared_dir / "audit.jsonl"
    env = dict(shim_env.env, SC4DNSSEC_AUDIT_LOG=str(audit), **_private_softhsm(shared_dir))
    proc = subprocess.run([str(hostile_host), shim_env.module, "fork", "50"], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "forks=50 ok=50 hung=0 failed=0", proc.stdout + proc.stderr[-3000:]
    lines = audit.read_text().splitlines()
    child_inits = {m.group(1) for line in lines if '"fn":"C_Initialize"' in line and '"rv":"CKR_OK"' in line
                   for m in [re.search(r'"pid":(\d+)', line)] if m}
    assert len(child_inits) == 51  # the parent and each of the 50 children


def test_discovery_answers_from_c_without_starting_python(shim_env, hostile_host):
    """C_GetFunctionList and C_GetInterface* come from the loader: libpython is not even loaded, and
    every one of the 68 slots points at a function."""
    from shim import _build

    _, soname = _build.libpython()
    proc = subprocess.run([str(hostile_host), shim_env.module, "discover", soname], env=shim_env.env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "slots=68 null=0 interfaces=1 python_loaded=0", proc.stdout + proc.stderr


def test_discovery_calls_are_recorded_once_per_process(shim_env, hostile_host):
    """The calls the loader answers without Python still reach the log (issue 12 item 8c): the
    ``load`` record counts the (3), C_GetInterfaceList (1) and C_GetInterface (5)
    calls made before C_Initialize, by the interface name and version asked for, and the
    C_Finalize record the one C_GetFunctionList made after the load."""
    proc = subprocess.run([str(hostile_host), shim_env.module, "rediscover"], env=shim_env.env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "init=0x0 final=0x0 refused=2", proc.stdout + proc.stderr
    records = [json.loads(line) for line in shim_env.audit_log.read_text().splitlines()]
    (load,) = [r for r in records if r["kind"] == "load"]
    assert load["args"]["discovery"] == {
        "C_GetFunctionList": 3, "C_GetInterfaceList": 1, "C_GetInterface": 5,
        "interfaces_asked": [{"name": "any", "version": "any", "calls": 1},
                             {"name": "PKCS 11", "version": "any", "calls": 1},
                             {"name": "PKCS 11", "version": "2.40", "calls": 2},
                             {"name": "PKCS 11", "version": "3.x", "calls": 1}],
        "flags_asked": 1, "refused": 2}, load
    calls = {r["fn"]: r for r in records if r["kind"] == "call"}
    assert "discovery" not in calls["C_Initialize"]["args"]  # nothing new since the load
    assert calls["C_Finalize"]["args"]["discovery"]["C_GetFunctionList"] == 4
    assert {k: v for k, v in calls["C_Finalize"]["args"]["discovery"].items() if k != "C_GetFunctionList"} \
        == {k: v for k, v in load["args"]["discovery"].items() if k != "C_GetFunctionList"}
    assert subprocess.run([sys.executable, "-m", "shim.cli", "audit", "verify", str(shim_env.audit_log)],
                          capture_output=True).returncode == 0


def test_generated_sources_say_so_and_ckr_macros_match_constants():
    from shim import _build
    from shim.constants import CKR

    header = _build.ckr_header()
    for rv in CKR:
        assert f"#define SC4_CKR_{rv.name} 0x{int(rv):X}UL\n" in header
    for text in (header, _build.function_list_header(), _build.build_paths_header(), _build.stub_entries(),
                 _build.core_source()):
        assert text.startswith("/* Generated by shim/_build.py")
    assert not re.search(r"0x[0-9A-Fa-f]+UL", _build.stub_entries() + _build.core_source())
    for c_file in (Path(_build.C_DIR)).glob("*.c"):
        assert not re.search(r"return 0x[0-9A-Fa-f]+UL", c_file.read_text()), c_file

