"""The bench table says how to read it: the floor, lower is better, why posted.latency is large."""

from __future__ import annotations

import io

from rich.console import Console

from xinterface.bench import report

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
