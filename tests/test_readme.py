"""README's promises: its Python example runs as printed, its test command is CI's."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

from tests.conftest import needs_kvm

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.DOTALL)


@needs_kvm
@pytest.mark.parametrize("block", python_blocks())
def test_python_example_prints_what_readme_says(block: str) -> None:
    expected = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    assert out.getvalue().splitlines() == expected


def test_ci_runs_the_readme_test_command() -> None:
    marker = re.search(r"<!-- test-command: (.*) -->", README)
    assert marker is not None
    command = marker.group(1)
    assert f"\n{command}\n" in README  # the command shown to readers is the one CI runs
    assert "README.md" in (ROOT / ".ci" / "run").read_text()
