"""Failure paths of the private pcscd + card harness: whatever a failed start started is stopped.

Each test makes one real part fail (pcscd loads a reader driver that does not exist; OpenSC's
reader listing is shadowed by one that lists nothing; a card process exits at once) and then
looks in /proc for anything left running that names the test's own directories.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtualcard.harness import Harness, HarnessError, pcscd_argv, pcscd_options, pid_alive

REPO = Path(__file__).resolve().parents[2]


def processes_naming(text: str) -> list[str]:
    """Command lines of live (non-zombie) processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short private directory (AF_UNIX socket paths are limited to 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="vcard-fail-"))
    yield d
    leftovers = processes_naming(str(d))
    shutil.rmtree(d, ignore_errors=True)
    assert not leftovers, f"processes left running: {leftovers}"


def needs_stack() -> None:
    if shutil.which("pcscd") is None or shutil.which("opensc-tool") is None:
        pytest.skip("pcscd and opensc-tool are needed")


class UnnamedReadersHarness(Harness):
    """pcscd serves its vpcd readers under other names, so the expected readers never appear."""

    def _reader_conf(self, entry: int, port: int, driver: str) -> str:
        return super()._reader_conf(entry, port, driver).replace("Virtual PCD", "Unexpected PCD")


class BrokenDriverHarness(Harness):
    """Its reader config names a driver that does not exist: pcscd gives up and exits."""

    def _reader_conf(self, entry: int, port: int, driver: str) -> str:
        return super()._reader_conf(entry, port, str(self.run_dir / "no-such-driver.so"))


@pytest.mark.parametrize(
    ("kind", "message"),
    [(UnnamedReadersHarness, "vpcd readers did not appear"), (BrokenDriverHarness, r"pcscd exited \(1\)")],
    ids=["readers-never-appear", "pcscd-exits"],
)
def test_failed_start_stops_pcscd_and_leaves_a_clean_state(short_dir: Path, kind: type, message: str) -> None:
    needs_stack()
    (short_dir / "run").mkdir()
    h = kind(short_dir / "run", readers=2)
    with pytest.raises(HarnessError, match=message) as err:
        h.start(timeout=2)
    assert "pcscd.log" in str(err.value)  # the message says where to look
    assert h.pcscd_pid == 0 and not h.running
    assert processes_naming(str(short_dir)) == []
    saved = Harness.load(short_dir / "run")
    assert saved.pcscd_pid == 0 and saved.cards == {}

def virtualcard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = dict(env or os.environ)
    run_env["PYTHONPATH"] = os.pathsep.join([str(REPO), run_env.get("PYTHONPATH", "")])
    run_env.pop("PCSCLITE_CSOCK_NAME", None)  # the CLI starts its own pcscd
    return subprocess.run(
        [sys.executable, "-m", "virtualcard.cli", *args], env=run_env, capture_output=True, text=True, timeout=120
    )


def test_cli_up_that_fails_leaves_nothing_running_and_down_and_up_work(short_dir: Path) -> None:
    needs_stack()
    state = short_dir / "card"
    blind = short_dir / "bin"
    blind.mkdir()
    tool = blind / "opensc-tool"  # lists no readers: `up` waits for readers that never show
    tool.write_text("#!/bin/sh\necho 'No smart card readers found.'\n")
    tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{blind}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = virtualcard("up", str(state), "--timeout", "2", env=env)
    assert r.returncode == 1, r
    assert "vpcd readers did not appear" in r.stderr and r.stdout == ""
    assert processes_naming(str(state)) == []

    down = virtualcard("down", str(state))
    assert down.returncode == 0, down
    assert virtualcard("status", str(state)).stdout.splitlines()[-1] == "down"

    # the same state directory comes up afterwards, and goes down again without leftovers
    up = virtualcard("up", str(state))
    assert up.returncode == 0, up.stderr
    assert f"PCSCLITE_CSOCK_NAME={state / 'run' / 'root' / 'pcscd' / 'pcscd.comm'}" in up.stdout
    assert len(processes_naming(str(state))) == 2  # pcscd and the card
    assert virtualcard("down", str(state)).returncode == 0
    assert processes_naming(str(state)) == []


def test_down_stops_what_a_killed_up_left(short_dir: Path) -> None:
    """`up` killed while it waits for the readers: the state file already names pcscd."""
    needs_stack()
    state = short_dir / "card"
    blind = short_dir / "bin"
    blind.mkdir()
    (blind / "opensc-tool").write_text("#!/bin/sh\necho 'No smart card readers found.'\n")
    (blind / "opensc-tool").chmod(0o755)
    env = {**os.environ, "PATH": f"{blind}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("PCSCLITE_CSOCK_NAME", None)
    up = subprocess.Popen(
        [sys.executable, "-m", "virtualcard.cli", "up", str(state), "--timeout", "600"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        saved = state / "run" / "harness.json"
        deadline = time.monotonic() + 120
        while not (saved.exists() and Harness.load(state / "run").pcscd_pid):
            assert up.poll() is None, f"virtualcard up exited ({up.returncode}) before starting pcscd"
            assert time.monotonic() < deadline, "virtualcard up never recorded its pcscd"
            time.sleep(0.05)
        pcscd = Harness.load(state / "run").pcscd_pid
        assert pid_alive(pcscd, "pcscd")
    finally:
        up.kill()
        up.wait()
    assert pid_alive(pcscd, "pcscd")  # what `up` left behind
    down = virtualcard("down", str(state))
    assert down.returncode == 0, down
    assert not pid_alive(pcscd, "pcscd")
    assert processes_naming(str(state)) == []


def test_card_that_exits_is_dropped_and_its_reader_stays_free(virtual_harness: Harness, short_dir: Path) -> None:
    reader = virtual_harness.free_reader()
    with pytest.raises(HarnessError, match=r"card exited \(2\)"):
        virtual_harness.add_card(short_dir / "not-a-card", reader)  # no state: the card refuses
    assert reader not in virtual_harness.cards
    assert virtual_harness.free_reader() == reader
    assert processes_naming(str(short_dir)) == []


@pytest.mark.parametrize(
    ("help_text", "polkit"),
    [
        ("  -c, --config\t\tnew reader.conf.d path\n  -x, --auto-exit\tpcscd will quit\n", False),
        ("  -c, --config\t\tnew reader.conf.d path\n  --disable-polkit\tdisable polkit support\n", True),
    ],
    ids=["built-without-polkit", "built-with-polkit"],
)
def test_polkit_is_disabled_exactly_when_pcscd_offers_it(tmp_path: Path, help_text: str, polkit: bool) -> None:
    fake = tmp_path / "pcscd"  # prints only its --help, as the two Debian builds word it
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\nUsage: pcscd options\nOptions:\n{help_text}EOF\n")
    fake.chmod(0o755)
    argv = pcscd_argv(tmp_path / "conf", str(fake))
    assert argv[:4] == [str(fake), "-f", "-c", str(tmp_path / "conf")]
    assert ("--disable-polkit" in argv) is polkit
    assert "--config" in pcscd_options(str(fake))

