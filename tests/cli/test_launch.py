"""``xinterface run``'s fast path (``xinterface.launch``): the same outcome as the click
command line for everything it takes, click never imported, and everything else left to
click."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.harness import DEADLINE, xinterface
from tests.conftest import EXAMPLES, GUESTS, needs_kvm
from xinterface.frontend.values import NONE, STDIO, STDOUT, Target
from xinterface.launch import _parse_run

HELLO = str(EXAMPLES / "hello-real.S")


def test_parse_run_takes_plain_options() -> None:
    options = _parse_run(["--memory=2M", "--gpa", "0x2000", "--trace", HELLO, "--vcpus", "3",
                          "--mode", "real", "--timeout", "2.5", "--serial", "-"])
    assert options == {"image": HELLO, "gpa": 0x2000, "mode": "real", "memory": 2 << 20,
                       "vcpus": 3, "serial": Target(STDOUT), "trace": True, "strict": False,
                       "debug": False, "timeout": 2.5, "gdb": None,
                       "gdb_wait": False, "qmp": None, "log_level": "warning",
                       "metrics": None, "snapshot_on": None, "snapshot": None,
                       "continue_run": False}
    monitored = _parse_run(["--qmp", "unix:/tmp/q.sock", "--log-level=debug", "--metrics",
                            "m.jsonl", HELLO])
    assert monitored is not None
    assert (monitored["qmp"], monitored["log_level"], monitored["metrics"]) == (
        "unix:/tmp/q.sock", "debug", "m.jsonl")
    # A bad value goes to click, which names the option.
    assert _parse_run(["--qmp", "tcp:1234", HELLO]) is None
    assert _parse_run(["--log-level", "loud", HELLO]) is None


def test_parse_run_defaults_are_clicks() -> None:
    options = _parse_run([HELLO])
    assert options is not None
    assert (options["gpa"], options["memory"], options["vcpus"], options["serial"],
            options["timeout"]) == (None, 64 << 20, 1, Target(NONE), 10.0)
    # An interactive console has no time limit unless --timeout is given (as in cli.run).
    interactive = _parse_run(["--serial", "stdio", HELLO])
    assert interactive is not None
    assert (interactive["serial"], interactive["timeout"]) == (Target(STDIO), 0)
    limited = _parse_run(["--serial=stdio", "--timeout=3", HELLO])
    assert limited is not None and limited["timeout"] == 3


@pytest.mark.parametrize("args", [
    [], ["--help", HELLO], ["-h"], [HELLO, HELLO], ["--memory", "lots", HELLO],
    ["--memory"], ["--timeout", "-1", HELLO], ["--vcpus", "0", HELLO], ["--mode", "v86", HELLO],
    ["--bogus", HELLO], ["--trace=yes", HELLO], ["--", HELLO], ["/nonexistent.S"],
    [str(EXAMPLES)], ["--serial", "/tmp/out.txt", HELLO]])
def test_parse_run_leaves_the_rest_to_click(args: list[str]) -> None:
    assert _parse_run(args) is None


def _click(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The same command through click alone."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv[0] = 'xinterface'; "
         "from xinterface.cli import main; main()", *map(str, args)],
        capture_output=True, text=True, errors="replace", timeout=DEADLINE, check=False)


@needs_kvm
@pytest.mark.parametrize("args", [
    ["run", HELLO],
    ["run", "--mode=protected", EXAMPLES / "hello-protected.S", "--memory", "2M", "--vcpus",
     "1", "--timeout", "5"],
    ["run", GUESTS / "spin.S", "--mode", "protected", "--timeout", "0.3"],
    ["run", GUESTS / "triple_fault.S", "--mode", "protected"],
    ["run", HELLO, "--memory", "5000B"],
    ["run", HELLO, "--memory", "lots"],
])
def test_fast_path_and_click_agree(args: list[str | Path]) -> None:
    fast, slow = xinterface(*args), _click(*args)
    # click names the program as it was started: "python -m xinterface" there.
    fast_err = fast.stderr.replace("python -m xinterface", "xinterface")
    assert (fast.returncode, fast.stdout, fast_err) == (slow.returncode, slow.stdout,
                                                         slow.stderr)


@needs_kvm
def test_fast_path_never_imports_click() -> None:
    probe = ("import atexit, sys; "
             "atexit.register(lambda: print('click' in sys.modules, file=sys.stderr)); "
             "from xinterface.launch import main; main()")
    done = subprocess.run([sys.executable, "-c", probe, "run", HELLO], capture_output=True,
                          text=True, timeout=DEADLINE, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (1, "Hello from real mode\n",
                                                           "False\n")
    done = subprocess.run([sys.executable, "-c", probe, "run", "--memory", "lots", HELLO],
                          capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert done.returncode == 2 and done.stderr.endswith("True\n")


@pytest.mark.parametrize("enabled", [True, False])
def test_importing_the_package_leaves_the_collector_as_it_was(enabled: bool) -> None:
    probe = (f"import gc; {'gc.enable()' if enabled else 'gc.disable()'}; import xinterface; "
             "print(gc.isenabled())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=DEADLINE, check=False)
    assert (done.returncode, done.stdout) == (0, f"{enabled}\n"), done.stderr


def test_parse_run_takes_gdb_and_drops_the_timeout() -> None:
    options = _parse_run(["--gdb", "tcp::1234", "--gdb-wait", HELLO])
    assert options is not None
    assert (options["gdb"], options["gdb_wait"], options["timeout"]) == ("tcp::1234", True, 0)
    timed = _parse_run(["--gdb=unix:/tmp/x", "--timeout=3", HELLO])
    assert timed is not None and timed["timeout"] == 3
