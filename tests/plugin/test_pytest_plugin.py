"""The pytest plugin, as a user meets it: a test file of their own, run by pytest in a
process of its own, with the plugin loaded as its entry point loads it."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from tests.conftest import GUESTS, needs_kvm

pytestmark = needs_kvm
ROOT = Path(__file__).resolve().parents[2]

BOOT_SECTOR = """\
        .code16
        .globl _start
_start: mov     $0xe9, %dx
        mov     $msg, %si
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, (%dx)
        jmp     1b
2:      mov     $0xf4, %dx
        mov     $3, %al
        out     %al, (%dx)
msg:    .asciz  "hello from the boot sector"
"""

USER_TESTS = '''
import os
import threading

from xinterface.spec import Boot, MachineSpec

def test_boot_sector(xi_run):
    guest = xi_run("boot.S", gpa=0x7c00, mode="real").start()
    guest.debugcon.expect(b"hello from the boot sector", timeout=10)
    result = guest.wait()
    assert (result.reason, result.exit_code) == ("exit", 7)
    assert result.exits["io"] >= 27

def test_typing(xi_run):
    guest = xi_run("{echo}").start()
    guest.console.expect(b"ready")
    guest.console.send(b"abc")
    guest.console.expect(b"ABC")
    guest.console.send(".")
    assert guest.wait().reason == "hlt"

def test_board(xi_boot):
    spec = MachineSpec(memory=32 << 20, board="microvm",
                       boot=Boot(firmware="/usr/share/seabios/bios-microvm.bin"))
    guest = xi_boot(spec).start()
    guest.debugcon.expect(b"SeaBIOS (version", timeout=20)

def test_bare_machine(xi_machine):
    assert xi_machine(memory=1 << 20).state.value == "idle"

def test_expect_shows_what_was_seen(xi_run):
    guest = xi_run("boot.S", gpa=0x7c00, mode="real").start()
    guest.debugcon.expect(b"nothing like this", timeout=5)

def test_leaked_fd(xi_machine):
    xi_machine(memory=1 << 20)
    os.open("/dev/null", os.O_RDONLY)

def test_leaked_thread(xi_machine):
    xi_machine(memory=1 << 20)
    threading.Thread(target=threading.Event().wait, name="left-running", daemon=True).start()
'''


def plugin_args() -> list[str]:
    """``-p`` the plugin unless this interpreter has it installed as an entry point."""
    eps = importlib.metadata.entry_points(group="pytest11")
    installed = any(ep.value == "xinterface.pytest_plugin" for ep in eps)
    return [] if installed else ["-p", "xinterface.pytest_plugin"]


def test_the_entry_point_is_declared() -> None:
    # (tomllib is 3.11's; the project runs on 3.10)
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.entry-points.pytest11]\n", 1)[1].split("\n\n", 1)[0]
    assert section.strip() == 'xinterface = "xinterface.pytest_plugin"'



@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each user test's outcome: "passed", or its failure message."""
    where = tmp_path_factory.mktemp("user")
    (where / "boot.S").write_text(BOOT_SECTOR)
    (where / "test_mine.py").write_text(USER_TESTS.replace("{echo}",
                                                           str(GUESTS / "serial_echo.S")))
    report = where / "report.xml"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *plugin_args(), "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", "test_mine.py"],
        cwd=where, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert report.exists(), done.stdout + done.stderr
    out = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        out[case.attrib["name"]] = "passed" if problem is None else (
            problem.attrib.get("message", "") + (problem.text or ""))
    return out


@pytest.mark.parametrize("name", ["test_boot_sector", "test_typing", "test_board",
                                  "test_bare_machine"])
def test_the_fixtures_run_guests(outcomes: dict[str, str], name: str) -> None:
    assert outcomes[name] == "passed"


def test_a_failed_expect_shows_the_console(outcomes: dict[str, str]) -> None:
    message = outcomes["test_expect_shows_what_was_seen"]
    assert "nothing like this" in message and "the run ended" in message
    assert "hello from the boot sector" in message


def test_a_leaked_fd_or_thread_fails_the_test(outcomes: dict[str, str]) -> None:
    assert "the test left behind: fd" in outcomes["test_leaked_fd"]
    assert "/dev/null" in outcomes["test_leaked_fd"]
    assert "thread 'left-running'" in outcomes["test_leaked_thread"]


def test_the_example_in_the_docs_passes(tmp_path: Path) -> None:
    """docs/pytest-plugin.md's complete example, run as it is written there."""
    page = (ROOT / "docs" / "pytest-plugin.md").read_text()
    blocks = page.split("```")
    source = next(b.removeprefix("asm\n") for b in blocks if b.startswith("asm\n"))
    test = next(b.removeprefix("python\n") for b in blocks
                if b.startswith("python\n") and "def test_" in b)
    (tmp_path / "boot.S").write_text(source)
    (tmp_path / "test_boot.py").write_text(textwrap.dedent(test))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, "-m", "pytest", *plugin_args(), "-q",
                           "-p", "no:cacheprovider", "test_boot.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
