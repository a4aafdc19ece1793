"""The bench table says how to read it: the floor, lower is better, why posted.latency is large."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

from rich.console import Console

from xinterface.bench import report, suite

RESULTS: list[dict[str, object]] = [
    {"name": "floor.pio.1", "unit": "ns/write", "median": 9000.0, "p10": 8900.0,
     "p90": 9100.0, "ratio_to_floor": None, "floor": None, "samples": 3},
    {"name": "sync.pio.1", "unit": "ns/write", "median": 13000.0, "p10": 12000.0,
     "p90": 14000.0, "ratio_to_floor": 13 / 9, "floor": "floor.pio.1", "samples": 3},
]


def test_table_and_markdown_carry_the_legend() -> None:
    out = io.StringIO()
    Console(file=out, width=100).print(report.table(RESULTS, {"cpu": "test"}))
    shown = " ".join(out.getvalue().split())
    markdown = report.markdown(RESULTS, {"cpu": "test"})
    for text in (shown, " ".join(markdown.split())):
        assert "lower is better" in text
        assert "minimal C VMM" in text
        assert "posted.latency is large by design" in text
        assert "a poller every 200 us" in text
    assert "| `sync.pio.1` | 13,000 | 12,000 - 14,000 | ns/write | 1.44 |" in markdown


def test_every_markdown_figure_is_stamped_with_host_kernel_commit_and_date() -> None:
    machine: dict[str, object] = {"cpu": "test", "host": "box", "kernel": "6.1.0",
                                  "commit": "abc123", "date": "2026-12-06 21:00 UTC"}
    rows = [line for line in report.markdown(RESULTS, machine).splitlines()
            if line.startswith("| `")]
    assert len(rows) == len(RESULTS)
    for row in rows:
        assert row.endswith("| box, 6.1.0, abc123, 2026-12-06 21:00 UTC |")
    # Outside a checkout there is no commit: the version names the code instead.
    outside = report.markdown(RESULTS, {**machine, "commit": "", "version": "9.9"})
    assert "| box, 6.1.0, version 9.9, 2026-12-06 21:00 UTC |" in outside


def test_machine_info_names_this_checkout_commit_and_a_utc_date() -> None:
    info = suite.machine_info()
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    assert str(info["commit"]).startswith(head)
    assert str(info["date"]).endswith(" UTC")
    assert info["host"] and info["kernel"]
