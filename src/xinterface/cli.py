"""The ``xinterface`` command."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn

import click

from .errors import GuestError, KvmError, XInterfaceError
from .loader import MODES, AssemblerError, assemble
from .machine import Machine

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
EXIT_TIMEOUT = 124  # as timeout(1) does

# Newer click makes ParamType generic; subscript it only for the type checker.
if TYPE_CHECKING:
    _IntParam = click.ParamType[int]
else:
    _IntParam = click.ParamType


class SizeType(_IntParam):
    """``64M``, ``1G``, ``4096K`` or a plain number of bytes."""

    name = "size"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a size such as 64M, 1G or 65536", param, ctx)
        return int(match.group(1)) * _UNITS[match.group(2).upper()]


class IntType(_IntParam):
    """An integer in any base Python reads: ``0x1000``, ``4096``."""

    name = "int"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return int(str(value), 0)
        except ValueError:
            self.fail(f"{value!r} is not an integer (e.g. 0x1000)", param, ctx)


def _fail(message: str, debug: bool, status: int = 1) -> NoReturn:
    if debug:
        traceback.print_exc()
    click.echo(f"xinterface: {message}", err=True)
    sys.exit(status)


@click.group()
@click.version_option(package_name="xinterface")
def main() -> None:
    """The KVM xinterface I/O services in Python: run guests, serve their I/O."""


@main.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--gpa", type=IntType(), default=0x1000, show_default=True,
              help="Guest-physical address the image is loaded and started at.")
@click.option("--mode", type=click.Choice(MODES), default="real", show_default=True,
              help="CPU mode every vCPU starts in.")
@click.option("--memory", type=SizeType(), default="64M", show_default=True,
              help="Guest RAM (a multiple of 4 KiB).")
@click.option("--vcpus", type=int, default=1, show_default=True)
@click.option("--trace", is_flag=True, help="Print every guest I/O access to stderr.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds before the run is ended (0: no limit).")
@click.option("--strict", is_flag=True, help="Stop on any access no device claims.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def run(image: Path, gpa: int, mode: str, memory: int, vcpus: int, trace: bool,
        timeout: float, strict: bool, debug: bool) -> None:
    """Run a flat binary IMAGE (or a GNU as source ending in .S, assembled at --gpa).

    Port 0xe9 output goes to stdout. The exit status is the debug-exit status (a write of v
    to port 0xf4 gives (v << 1) | 1), or 0 once every vCPU has halted.
    """
    try:
        if image.suffix in (".S", ".s"):
            data = assemble(image, gpa=gpa, bits=64 if mode == "long" else 32)
        else:
            data = image.read_bytes()
        with Machine(memory=memory, vcpus=vcpus, strict=strict,
                     console=sys.stdout.buffer, trace=sys.stderr if trace else None) as machine:
            machine.load_flat(data, gpa=gpa, mode=mode)
            result = machine.run(timeout=timeout or None)
    except GuestError as exc:
        _fail(str(exc).splitlines()[0] + " (--debug shows registers)"
              if not debug else str(exc), debug)
    except (XInterfaceError, KvmError) as exc:
        _fail(str(exc), debug)
    except AssemblerError as exc:
        _fail(str(exc), debug)
    except OSError as exc:
        _fail(f"{exc.filename or image}: {exc.strerror}", debug)
    if result.reason == "timeout":
        _fail(f"the guest was still running after {timeout:g} s; raise --timeout, or check "
              "that it halts or writes port 0xf4", debug=False, status=EXIT_TIMEOUT)
    if result.reason == "exit":
        assert result.exit_code is not None
        sys.exit(result.exit_code)
    sys.exit(0)


@main.command()
@click.option("--quick", is_flag=True, help="Small sizes, 3 rounds: under 30 s.")
@click.option("--repeats", type=int, default=None, help="Rounds (default 3 quick, 7 full).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the results and the machine description as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write matplotlib figures (needs the plot extra).")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the table as Markdown.")
@click.option("--peer", "peers", type=click.Choice(["qemu", "qemu-net"]), multiple=True,
              help="Also run the same guest binary on this VMM (qemu-system-x86_64); "
                   "qemu-net: virtio-net on a TAP, QEMU's and ours (needs root).")
@click.option("--scale", type=float, default=1.0, hidden=True,
              help="Multiply every size (tests use a tiny scale).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def bench(quick: bool, repeats: int | None, json_path: Path | None, plot_path: Path | None,
          markdown_path: Path | None, peers: tuple[str, ...], scale: float,
          debug: bool) -> None:
    """Measure every path side by side with the C floor: medians, p10-p90, ratios."""
    from rich.progress import Progress

    from .bench import report, suite

    try:
        figs, notices = suite.figures(quick, scale, peers)
        rounds = repeats or (3 if quick else 7)
        with Progress(transient=True) as progress:
            task = progress.add_task("benchmarks", total=rounds * len(figs))

            def step(name: str) -> None:
                progress.update(task, advance=1, description=f"{name:<24}")

            suite.run_suite(figs, rounds, step)
        results = suite.results(figs)
        machine = suite.machine_info()
        for notice in notices:
            click.echo(f"xinterface: {notice}", err=True)
        report.print_table(results, machine)
        if json_path is not None:
            report.write_json(json_path, results, machine)
        if plot_path is not None:
            report.plot(plot_path, results)
        if markdown_path is not None:
            markdown_path.write_text(report.markdown(results, machine))
    except (XInterfaceError, KvmError, GuestError, AssemblerError, RuntimeError, OSError) as exc:
        _fail(str(exc), debug)


def _stream(target: str, stack: contextlib.ExitStack) -> BinaryIO | None:
    """``-`` for stdout, else a file opened for writing; ``""`` for nowhere."""
    if not target:
        return None
    if target == "-":
        return sys.stdout.buffer
    return stack.enter_context(open(target, "wb"))


@main.command()
@click.option("--bios", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Firmware image, e.g. /usr/share/seabios/bios-microvm.bin.")
@click.option("--memory", type=SizeType(), default="64M", show_default=True)
@click.option("--debugcon", default="-", show_default=True,
              help="Where the firmware's debug console (port 0x402) goes: FILE or - (stdout).")
@click.option("--serial", default="-", show_default=True,
              help="Where COM1 (0x3f8) output goes: FILE or - (stdout).")
@click.option("--until", "until", default=None,
              help="End with status 0 once TEXT appears on the debug console or serial.")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds before the run is ended with an error (0: no limit).")
@click.option("--board", type=click.Choice(["microvm", "pc"]), default="microvm",
              show_default=True,
              help="pc adds the i440FX/PIIX3 PCI configuration space (SeaBIOS's bios.bin).")
@click.option("--posted-debugcon", is_flag=True,
              help="Debug console bytes through KVM's coalesced ring: no exit per byte.")
@click.option("--disk", "disks", multiple=True, metavar="FILE[,readonly]",
              help="A raw image as a virtio-blk disk (repeatable; the first boots).")
@click.option("--net", "nets", multiple=True, metavar="tap=NAME[,mac=MAC][,rom=FILE|ipxe]",
              help="A virtio-net interface on an existing TAP (repeatable); rom: its option "
                   "ROM on the pc board (ipxe: Debian's iPXE). COM1 is then the BIOS screen.")
@click.option("--rng", is_flag=True, help="A virtio-rng device (entropy from os.urandom).")
@click.option("--virtio-console", is_flag=True,
              help="A virtio-console (Linux's hvc0) writing where --serial goes.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def boot(bios: Path, memory: int, debugcon: str, serial: str, until: str | None,
         timeout: float, board: str, posted_debugcon: bool, disks: tuple[str, ...],
         nets: tuple[str, ...], rng: bool, virtio_console: bool, debug: bool) -> None:
    """Boot firmware from the reset vector on the standard devices (fw_cfg, COM1, CMOS/RTC,
    debug console at 0x402), all of them xinterface clients."""
    from .boards import BOARDS
    from .boards.virtio import Disk, Net
    from .devices import Output, Until

    try:
        disk_list, net_list = [Disk.parse(d) for d in disks], [Net.parse(n) for n in nets]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    matched: list[Until] = []
    try:
        with contextlib.ExitStack() as stack:
            machine = stack.enter_context(Machine(memory=memory, irqchip=True))
            machine.load_firmware(bios)
            outputs: list[Output | None] = [_stream(debugcon, stack), _stream(serial, stack)]
            if until is not None:
                matched = [Until(out or open_null(stack), until.encode(), machine.stop)
                           for out in outputs]
                outputs = list(matched)
            BOARDS[board](machine, debugcon=outputs[0], serial=outputs[1],
                          posted_debugcon=posted_debugcon, disks=disk_list, nets=net_list,
                          rng=rng, virtio_console=virtio_console, sercon=bool(net_list))
            result = machine.run(timeout=timeout or None)
    except GuestError as exc:
        _fail(str(exc).splitlines()[0] + " (--debug shows registers)"
              if not debug else str(exc), debug)
    except (XInterfaceError, KvmError, OSError) as exc:
        _fail(str(exc), debug)
    if any(w.matched for w in matched):
        sys.exit(0)
    if result.reason == "timeout":
        wanted = f" without {until!r} appearing" if until else ""
        _fail(f"the firmware was still running after {timeout:g} s{wanted}; raise --timeout",
              debug=False, status=EXIT_TIMEOUT)
    if until is not None:
        _fail(f"the firmware stopped ({result.reason}) before {until!r} appeared", debug=False)
    sys.exit(0 if result.reason in ("hlt", "reset", "shutdown") else 1)


def open_null(stack: contextlib.ExitStack) -> BinaryIO:
    return stack.enter_context(open(os.devnull, "wb"))
