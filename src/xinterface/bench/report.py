"""Showing bench results: a rich table, JSON, and an optional matplotlib plot."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .suite import POLL


def legend() -> str:
    """What the columns mean; the table's caption and the Markdown's note."""
    return (
        "Median of the rounds, p10 - p90 their spread; lower is better. x floor: the median "
        "over the rounds of the figure / its floor in the same round (bootsector.pio.1: over "
        "qemu.pio.1, the same binary under QEMU; startup.run: over qemu.startup, the same few "
        "instructions run by a whole process from exec to exit). A floor.* figure is the "
        "same guest loop driven by a minimal C VMM (KVM_RUN and nothing else, bench/floor.c), "
        "the least the path can cost on the host measured; "
        "floor.slice_* and floor.slice_view are plain Python memoryview copies. *.latency: "
        "from a guest write to its handler call. posted.latency is large by design: a posted "
        "write makes no exit, so it waits in KVM's coalesced ring until the next drain, in "
        f"this suite a poller every {POLL * 1e6:.0f} us (the spinning guest makes no other "
        "exit); it is that wait, not the cost of a write (posted.pio.1).")


def table(results: list[dict[str, object]], machine: dict[str, object]) -> Table:
    t = Table(title=f"xinterface bench on {machine.get('cpu') or 'this machine'} "
                    f"({machine.get('kvm_module')}, Python {machine.get('python')}, "
                    f"{machine.get('exit_loop')} exit loop)",
              caption=legend(), caption_justify="left")
    t.add_column("figure")
    t.add_column("median", justify="right")
    t.add_column("p10 - p90", justify="right")
    t.add_column("unit")
    t.add_column("x floor", justify="right")
    for r in results:
        ratio = r["ratio_to_floor"]
        t.add_row(str(r["name"]), f"{r['median']:,.0f}", f"{r['p10']:,.0f} - {r['p90']:,.0f}",
                  str(r["unit"]), f"{ratio:.2f}" if isinstance(ratio, float) else "")
    return t


def write_json(path: Path, results: list[dict[str, object]],
               machine: dict[str, object]) -> None:
    path.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")


def stamp(machine: dict[str, object]) -> str:
    """Where and when a figure was measured: host, kernel, commit (or the version, outside a
    checkout) and date, so a figure read later is never taken for this machine's."""
    code = machine.get("commit") or f"version {machine.get('version', '?')}"
    return (f"{machine.get('host', '?')}, {machine.get('kernel', '?')}, {code}, "
            f"{machine.get('date', '?')}")


def markdown(results: list[dict[str, object]], machine: dict[str, object]) -> str:
    """The table as Markdown, for docs/performance.md; every row carries its stamp."""
    lines = [f"Measured on {machine.get('cpu')}, kernel {machine.get('kernel')} "
             f"({machine.get('kvm_module')}, {machine.get('cpus')} CPUs, nested: "
             f"{machine.get('nested')}), Python {machine.get('python')}, "
             f"{machine.get('exit_loop')} exit loop.", "",
             "| figure | median | p10 - p90 | unit | x floor | measured (host, kernel, commit, "
             "date) |", "|---|---:|---:|---|---:|---|"]
    measured = stamp(machine)
    for r in results:
        ratio = r["ratio_to_floor"]
        lines.append(f"| `{r['name']}` | {r['median']:,.0f} | {r['p10']:,.0f} - {r['p90']:,.0f}"
                     f" | {r['unit']} | {f'{ratio:.2f}' if isinstance(ratio, float) else ''} "
                     f"| {measured} |")
    lines += ["", legend()]
    return "\n".join(lines) + "\n"


def plot(path: Path, results: list[dict[str, object]]) -> None:
    """Cost per path next to the floors, and bus scaling. Needs the ``plot`` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'xinterface[plot]'") from exc
    writes = [r for r in results if r["unit"] == "ns/write"
              and not str(r["name"]).startswith("bus.")]
    bus = [r for r in results if str(r["name"]).startswith("bus.events.")]
    dispatch = [r for r in results if str(r["name"]).startswith("bus.dispatch.")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    names = [str(r["name"]) for r in writes]
    left.barh(names, [float(str(r["median"])) / 1000 for r in writes],
              color=["grey" if n.startswith("floor") else "tab:blue" for n in names])
    left.set_xlabel("µs per guest write (median)")
    left.set_title("cost per path; grey: the C floor")
    right.plot([int(str(r["name"]).rsplit(".", 1)[1]) for r in bus],
               [float(str(r["median"])) / 1000 for r in bus], marker="o")
    right.set_xscale("log")
    right.set_ylim(bottom=0)
    right.set_xlabel("events registered on the bus")
    right.set_ylabel("µs per SYNC write (blue)")
    right.set_title("cost vs registrations")
    if dispatch:
        alone = right.twinx()
        alone.plot([int(str(r["name"]).rsplit(".", 1)[1]) for r in dispatch],
                   [float(str(r["median"])) for r in dispatch], marker="s", color="tab:orange")
        alone.set_ylim(bottom=0)
        alone.set_ylabel("ns per dispatch alone (orange)")
    fig.tight_layout()
    fig.savefig(path)


def print_table(results: list[dict[str, object]], machine: dict[str, object]) -> None:
    Console().print(table(results, machine))
