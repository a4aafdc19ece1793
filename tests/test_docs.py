"""The documentation's promises (README.md and every page of docs/): each fenced ``python`` or
``sh`` block is marked ``<!-- runnable -->`` and runs here, printing what its ``# `` lines say,
or is marked ``<!-- not-run: why -->`` (something else runs it); README's test command is CI's;
the version is one string."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _pytest.mark import ParameterSet

from tests.conftest import needs_kvm
from xinterface import __version__

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(?:^(<!-- [^\n]*-->)\n)?^```(python|sh)\n(.*?)^```$",
                   re.DOTALL | re.MULTILINE)


def blocks() -> list[tuple[str, str | None, str, str]]:
    """(where, marker, language, code) of every python and sh block of every page."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start(2) if match.group(1) else match.start()) + 1
            found.append((f"{page.relative_to(ROOT)}:{line}", match.group(1), match.group(2),
                          match.group(3)))
    return found


def runnable(language: str) -> list[ParameterSet]:
    return [pytest.param(code, id=where) for where, marker, lang, code in blocks()
            if lang == language and marker == "<!-- runnable -->"]


def expected_output(code: str) -> list[str]:
    return [line[2:] for line in code.splitlines() if line.startswith("# ")]


def test_every_example_is_run_here_or_says_what_runs_it() -> None:
    unmarked = [where for where, marker, _, _ in blocks()
                if marker != "<!-- runnable -->"
                and not (marker or "").startswith("<!-- not-run: ")]
    assert not unmarked, f"blocks marked neither runnable nor not-run: {unmarked}"
    assert len(runnable("python")) >= 8 and len(runnable("sh")) >= 3  # the finder finds them


@needs_kvm
@pytest.mark.parametrize("code", runnable("python"))
def test_python_example_prints_what_the_page_says(code: str) -> None:
    # A real text stream over bytes: a machine without a console writes to sys.stdout.buffer.
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "example", "exec"), {})
    finally:
        os.chdir(cwd)
    out.flush()
    assert out.buffer.getvalue().decode().splitlines() == expected_output(code)


@needs_kvm
@pytest.mark.parametrize("code", runnable("sh"))
def test_sh_example_succeeds_and_ends_with_what_the_page_says(code: str) -> None:
    # The `xinterface` of this interpreter's environment, on this checkout's package.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    expected = expected_output(code)
    assert done.stdout.splitlines()[len(done.stdout.splitlines()) - len(expected):] == expected


def test_ci_runs_the_readme_test_command() -> None:
    marker = re.search(r"<!-- test-command: (.*) -->", README)
    assert marker is not None
    command = marker.group(1)
    assert f"\n{command}\n" in README  # the command shown to readers is the one CI runs
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_readme_stays_short_and_points_to_pages_that_exist() -> None:
    assert len(README.splitlines()) <= 200
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", README)
    assert links and all((ROOT / link).is_file() for link in links), links


def test_the_version_is_one_string() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    newest = re.search(r"^## (\S+)", changelog, re.MULTILINE)
    assert newest is not None and newest.group(1) == __version__
    shown = subprocess.run([sys.executable, "-m", "xinterface", "--version"], capture_output=True,
                           text=True, check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    assert f"version {__version__} " in shown
    assert "dynamic = [\"version\"]" in (ROOT / "pyproject.toml").read_text()
