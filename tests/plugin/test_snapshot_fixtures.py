"""The plugin's ``xi_snapshot`` (boot once per session to a console line, snapshot) and
``xi_restore`` (a fresh restore per test), in a pytest process of the user's own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from tests.conftest import GUESTS, needs_kvm
from tests.plugin.test_pytest_plugin import ROOT, plugin_args

pytestmark = needs_kvm

USER_TESTS = '''
import json
import os

import pytest

COUNT = "{count}"
LINES = "".join(f"{{n}}\\n" for n in range(51, 100)).encode()

@pytest.fixture(scope="session")
def at_50(xi_snapshot):
    return xi_snapshot(COUNT, at=b"50\\n")

def test_first_restore_goes_on_from_the_line(xi_restore, at_50):
    guest = xi_restore(at_50)
    guest.machine.memory.write(0x8000, b"\\xff\\xff")   # this restore's count, broken
    guest.start()
    result = guest.wait()
    assert guest.debugcon.seen == b"b\\n" and result.exit_code == 7

def test_the_next_restore_is_fresh(xi_restore, at_50, xi_snapshot):
    assert xi_snapshot(COUNT, at="50\\n") == at_50    # taken once per session
    guest = xi_restore(at_50).start()
    result = guest.wait()
    assert guest.debugcon.seen == LINES and (result.reason, result.exit_code) == ("exit", 5)

def test_text_that_never_comes(xi_snapshot):
    xi_snapshot(COUNT, at=b"1000\\n", timeout=30)
'''


def _run_user_file(where: Path, name: str, text: str) -> dict[str, str]:
    (where / name).write_text(text)
    report = where / "report.xml"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *plugin_args(), "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", name],
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


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _run_user_file(tmp_path_factory.mktemp("user"), "test_mine.py",
                          USER_TESTS.format(count=GUESTS / "count_print.S"))


def test_each_test_gets_a_fresh_restore_of_one_snapshot(outcomes: dict[str, str]) -> None:
    assert outcomes["test_first_restore_goes_on_from_the_line"] == "passed"
    assert outcomes["test_the_next_restore_is_fresh"] == "passed"


def test_a_line_that_never_comes_shows_the_consoles(outcomes: dict[str, str]) -> None:
    message = outcomes["test_text_that_never_comes"]
    assert "'1000\\n' did not appear (the run ended: exit)" in message, message
    assert "99\\n" in message   # what the debug console showed


@pytest.mark.skipif(not Path("/usr/share/seabios/bios-microvm.bin").exists(),
                    reason="Debian's seabios is not installed")
def test_the_example_in_the_docs_passes(tmp_path: Path) -> None:
    """docs/pytest-plugin.md's session snapshot example, run as it is written there."""
    page = (ROOT / "docs" / "pytest-plugin.md").read_text()
    test = next(b.removeprefix("python\n") for b in page.split("```")
                if b.startswith("python\n") and "xi_snapshot" in b)
    outcome = _run_user_file(tmp_path, "test_booted.py", textwrap.dedent(test))
    assert outcome and set(outcome.values()) == {"passed"}, outcome
