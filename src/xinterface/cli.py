"""The ``xinterface`` command: a thin front end; the work is in ``xinterface.frontend`` and
below, imported by the command that needs it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ._version import __version__
from .accel import LOOP
from .frontend.options import SecondsType, SizeType, TargetType, run_option
from .frontend.outputs import Stdout, Target
from .frontend.report import EXIT_TIMEOUT, fail, reported
from .frontend.run import guarded, no_limit_when_interactive, run_image
from .frontend.run_options import (
    MONITOR_OPTIONS,
    RUN_OPTIONS,
    SERIAL_HELP,
    SNAPSHOT_OPTIONS,
    arguments,
)
from .frontend.serve import serve
from .spec import BOARD_NAMES, Boot, Consoles, MachineSpec


class _Main(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        return guarded(lambda: super(_Main, self).invoke(ctx))


@click.group(cls=_Main)
@click.version_option(__version__,
                      message=f"%(prog)s, version %(version)s (exit loop: {LOOP})")
def main() -> None:
    """The KVM xinterface I/O services in Python: run guests, serve their I/O."""


def _no_limit_when_interactive(ctx: click.Context, serial: Target, timeout: float) -> float:
    given = ctx.get_parameter_source("timeout") is not click.core.ParameterSource.DEFAULT
    return no_limit_when_interactive(serial, timeout, given)


# The command line's words for the description's fields whose rules name options.
_FIELD_OPTIONS = {"memory": "--memory", "vcpus": "--vcpus", "cpu": "--cpu", "board": "--board",
                  "boot.firmware": "--bios", "boot.kernel": "--kernel",
                  "boot.initrd": "--initrd", "boot.cmdline": "--append"}


def _check_spec(spec: MachineSpec) -> None:
    """The description's rules, their failures as click's usage errors naming the option."""
    from .errors import XInterfaceError

    try:
        spec.validate()
    except XInterfaceError as exc:
        if exc.argument == "boot":
            raise click.UsageError("give exactly one of --bios FILE (firmware) and --kernel "
                                   "FILE (Linux, booted directly)") from None
        if exc.argument == "boot.initrd":
            raise click.BadParameter("--initrd needs --kernel", param_hint="'--initrd'") from None
        option = _FIELD_OPTIONS.get(exc.argument or "")
        message = str(exc.strerror).removesuffix(" (EINVAL)")
        raise click.BadParameter(message, param_hint=f"'{option}'" if option else None) from None


def _run_options(command: Callable[..., None]) -> Callable[..., None]:
    """``run``'s options, one per row of the table the fast path reads too."""
    for option in reversed(RUN_OPTIONS):
        command = run_option(option)(command)
    return command


def _monitor_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--qmp``, ``--log-level``, ``--metrics``: the same rows of the table as on ``run``."""
    for option in reversed(MONITOR_OPTIONS):
        command = run_option(option)(command)
    return command


def _snapshot_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--snapshot-on``, ``--snapshot``, ``--continue``: the same rows as on ``run``."""
    for option in reversed(SNAPSHOT_OPTIONS):
        command = run_option(option)(command)
    return command


def run_arguments(ctx: click.Context) -> dict[str, Any]:
    """``run_image``'s keyword arguments from ``run``'s parsed context, as the fast path
    (``launch``) makes them."""
    given = {o.name for o in RUN_OPTIONS
             if ctx.get_parameter_source(o.name) is not click.core.ParameterSource.DEFAULT}
    return arguments(ctx.params, given)


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_run_options
@click.pass_context
def run(ctx: click.Context, /, image: Path, **options: Any) -> None:
    """Run IMAGE: a GNU as source (.S or .s, assembled at --gpa), an ELF executable, or a
    flat binary.

    Port 0xe9 output goes to stdout. The exit status is the debug-exit status (a write of v
    to port 0xf4 gives (v << 1) | 1), or 0 once every vCPU has halted.
    """
    run_image(image, **run_arguments(ctx))


@main.command()
@click.option("--quick", is_flag=True, help="Small sizes, 3 rounds: under 30 s.")
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help="Rounds (default 3 quick, 7 full).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the results and the machine description as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write matplotlib figures (needs the plot extra).")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the table as Markdown.")
@click.option("--peer", "peers", type=click.Choice(["qemu", "qemu-net", "vhost-user"]),
              multiple=True,
              help="Also run the same boot-sector guest on QEMU (qemu-system-x86_64 with "
                   "KVM) and on xinterface, for comparison; qemu-net: virtio-net on a TAP, "
                   "QEMU's and ours (needs root); vhost-user: virtio-blk under QEMU and on "
                   "xinterface, each with its own device and with vhost-user-blk on "
                   "qemu-storage-daemon and on `xinterface serve blk`.")
@click.option("--scale", type=float, default=1.0, hidden=True,
              help="Multiply every size (tests use a tiny scale).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def bench(quick: bool, repeats: int | None, json_path: Path | None, plot_path: Path | None,
          markdown_path: Path | None, peers: tuple[str, ...], scale: float,
          debug: bool) -> None:
    """Measure every path side by side with the C floor: medians, p10-p90, ratios."""
    if plot_path is not None:
        try:  # before minutes of measuring, not after
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.BadParameter("needs matplotlib, which is not installed: pip install "
                                     "'xinterface[plot]'", param_hint="'--plot'") from None

    from rich.progress import Progress

    from .bench import report, suite
    from .errors import GuestError, KvmError, XInterfaceError
    from .loader import AssemblerError

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
        fail(str(exc), exc=exc, debug=debug)


@main.command()
@click.option("--bios", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Firmware image, e.g. /usr/share/seabios/bios-microvm.bin "
              "(or --kernel).")
@click.option("--kernel", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Boot this Linux kernel directly: a bzImage, or a vmlinux "
              "with a PVH note (no firmware).")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="An initramfs for --kernel.")
@click.option("--append", default="console=ttyS0 reboot=p panic=-1", show_default=True,
              help="The kernel command line for --kernel.")
@click.option("--cpu", type=click.Choice(sorted(["host", "baseline"])), default="baseline",
              show_default=True, help="CPU template: host (what KVM offers) or baseline "
              "(x86-64 without XSAVE, POPCNT, SMAP/SMEP, FSGSBASE...).")
@click.option("--cpu-workarounds/--no-cpu-workarounds", default=True, show_default=True,
              help="Where the host ignores the CPUID we set (kvm_pvm), add the kernel's own "
              "switches (noxsave clearcpuid=...) to --append.")
@click.option("--memory", type=SizeType(), default="64M", show_default=True,
              help="Guest RAM, 640K or more for SeaBIOS (a bare number is MiB, as QEMU's -m).")
@click.option("--vcpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="vCPUs: the firmware starts on vCPU 0 and wakes the others itself.")
@click.option("--debugcon", type=TargetType(), default="none", show_default=True,
              help="The firmware's debug console (port 0x402, SeaBIOS's log): FILE, - "
                   "(stdout) or none.")
@click.option("--serial", type=TargetType(interactive=True), default="-", show_default=True,
              help="COM1 (a 16550A at 0x3f8, IRQ 4): " + SERIAL_HELP)
@click.option("--until", "until", default=None,
              help="End with status 0 once TEXT appears on the debug console or serial.")
@click.option("--timeout", type=SecondsType(), default=60.0, show_default=True,
              help="Seconds before the run is ended with status 124 (0: no limit; no limit "
                   "by default with --serial stdio).")
@click.option("--board", type=click.Choice(BOARD_NAMES), default="microvm",
              show_default=True,
              help="pc adds the i440FX/PIIX3 PCI configuration space (SeaBIOS's bios.bin).")
@click.option("--posted-debugcon", is_flag=True,
              help="Debug console bytes through KVM's coalesced ring: no exit per byte.")
@click.option("--disk", "disks", multiple=True,
              metavar="FILE[,readonly] | vhost-user=PATH[,reconnect=S]",
              help="A raw image as a virtio-blk disk, or a disk served by the vhost-user-blk "
                   "backend listening at PATH (repeatable; the first boots).")
@click.option("--net", "nets", multiple=True,
              metavar="tap=NAME[,mac=MAC][,rom=FILE|ipxe] | vhost-user=PATH[,mac=MAC]",
              help="A virtio-net interface on an existing TAP (repeatable); rom: its option "
                   "ROM on the pc board (ipxe: Debian's iPXE). COM1 is then the BIOS screen.")
@click.option("--rng", is_flag=False, flag_value="urandom", default=None,
              metavar="[vhost-user=PATH]",
              help="A virtio-rng device (entropy from os.urandom), or one served by the "
                   "vhost-user backend listening at PATH.")
@click.option("--virtio-console", is_flag=True,
              help="A virtio-console (Linux's hvc0): its output goes where --serial goes, and "
                   "what is typed (--serial stdio) goes to it instead of COM1.")
@click.option("--gdb", default=None, metavar="ADDRESS",
              help="Serve GDB's remote protocol on tcp::PORT, tcp:HOST:PORT or unix:PATH "
                   "(docs/gdb.md); no --timeout unless given.")
@click.option("--gdb-wait", is_flag=True,
              help="With --gdb: hold the firmware's first instruction until GDB attaches.")
@click.option("--debug", is_flag=True, help="Show tracebacks and registers on errors.")
@_monitor_options
@_snapshot_options
@click.pass_context
def boot(ctx: click.Context, bios: Path | None, kernel: Path | None, initrd: Path | None,
         append: str, cpu: str, cpu_workarounds: bool, memory: int, vcpus: int,
         debugcon: Target,
         serial: Target, until: str | None, timeout: float, board: str, posted_debugcon: bool,
         disks: tuple[str, ...], nets: tuple[str, ...], rng: str | None,
         virtio_console: bool, gdb: str | None, gdb_wait: bool, debug: bool, qmp: str | None,
         log_level: str, metrics: str | None, snapshot_on: str | None, snapshot: str | None,
         continue_run: bool) -> None:
    """Boot firmware from the reset vector (--bios), or a Linux kernel directly (--kernel), on
    the standard devices (fw_cfg, COM1, CMOS/RTC, debug console at 0x402, virtio), all of them
    xinterface clients."""
    from .frontend.devices import is_vhost_user, parse_disk, parse_net, parse_vhost_user
    from .frontend.snapshot_on import SnapshotOn, check_options

    wrong = check_options(snapshot_on, snapshot, continue_run)
    if wrong is not None:
        raise click.UsageError(wrong)

    spec = MachineSpec(
        memory=memory, vcpus=vcpus, cpu=cpu if kernel is not None else None, board=board,
        boot=Boot(firmware=None if bios is None else str(bios),
                  kernel=None if kernel is None else str(kernel),
                  initrd=None if initrd is None else str(initrd)),
        rng=rng == "urandom", consoles=Consoles(posted_debugcon=posted_debugcon,
                                   virtio_console=virtio_console))
    _check_spec(spec)
    try:
        devices = (tuple(parse_disk(d) for d in disks if not is_vhost_user(d)),
                   tuple(parse_net(n) for n in nets if not is_vhost_user(n)))
        served = tuple(parse_vhost_user(kind, text) for kind, given in
                       (("blk", disks), ("net", nets), ("rng", (rng,) if rng else ()))
                       for text in given if text != "urandom" and (kind == "rng" or
                                                                   is_vhost_user(text)))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    # With a NIC, COM1 is the BIOS screen: what iPXE prints reaches --serial.
    spec = spec._replace(disks=devices[0], nets=devices[1], vhost_user=served,
                         consoles=spec.consoles._replace(sercon=bool(devices[1])))
    _check_spec(spec)

    from .build import build, build_machine
    from .devices import Until
    from .frontend.kernel import PANIC, kernel_cmdline
    from .frontend.outputs import stream_for
    from .frontend.session import Session
    from .observe.logs import configure

    configure(log_level)
    panic: Until | None = None
    timeout = _no_limit_when_interactive(ctx, serial, timeout)
    if gdb is not None and (ctx.get_parameter_source("timeout")
                            is click.core.ParameterSource.DEFAULT):
        timeout = 0  # a debugging session lasts as long as the user wants
    stdout = Stdout()
    watchers: list[Until] = []
    taker: SnapshotOn | None = None
    with reported(stdout, debug):
        if kernel is not None:
            spec = spec._replace(boot=spec.boot._replace(
                cmdline=kernel_cmdline(append, cpu, cpu_workarounds)))
        with build_machine(spec) as machine:
            session = Session(machine, serial, stdout, qmp=qmp, metrics=metrics)
            outputs = [stream_for(debugcon, stdout), session.serial_output()]
            if snapshot_on is not None and snapshot is not None:
                taker = SnapshotOn(machine, snapshot_on, snapshot, continue_run)
                outputs = [taker.watch(out) for out in outputs]
            if until is not None:
                watchers = [Until(out, until.encode(), machine.stop) for out in outputs]
                outputs = list(watchers)
            if kernel is not None:
                panic = Until(outputs[1] or stdout, PANIC, lambda: machine.exit(0xFF))
                outputs[1] = panic
            built = build(spec, machine, debugcon=outputs[0], serial=outputs[1])
            if gdb is not None:
                # A kernel is 64-bit code entered in 32-bit mode (PVH): GDB is told x86-64
                # from the start, as it reads vmlinux.
                machine.serve_gdb(gdb, wait=gdb_wait,
                                  arch="i386:x86-64" if kernel is not None else None)
            assert built.feed is not None   # every board has COM1
            session.platform = built.platform
            session.connect(built.feed)
            result = (session.run(timeout or None) if taker is None
                      else taker.run(session, timeout or None))
    session.check_console()
    what = "the firmware" if kernel is None else "the kernel"
    if panic is not None and panic.matched:
        fail("the kernel panicked (\"Kernel panic - not syncing\" on the serial console)")
    if taker is not None:
        taker.end(what, result)
    if any(w.matched for w in watchers) or session.quit_requested:
        sys.exit(0)
    if result.reason == "timeout":
        wanted = f" without {until!r} appearing" if until else ""
        fail(f"{what} was still running after {timeout:g} s{wanted}; raise --timeout",
             status=EXIT_TIMEOUT)
    if until is not None:
        fail(f"{what} stopped ({result.reason}) before {until!r} appeared")
    sys.exit(0 if result.reason in ("hlt", "reset", "shutdown") else 1)


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--serial", type=TargetType(interactive=True), default=None,
              help="Where COM1 goes, if the snapshot has it (default: stdout): " + SERIAL_HELP)
@click.option("--debugcon", type=TargetType(), default="none", show_default=True,
              help="The firmware's debug console (port 0x402): FILE, - (stdout) or none. "
                   "Port 0xe9 goes to stdout, as on run and boot.")
@click.option("--until", "until", default=None,
              help="End with status 0 once TEXT appears on a console.")
@click.option("--timeout", type=SecondsType(), default=60.0, show_default=True,
              help="Seconds before the run is ended with status 124 (0: no limit; no limit "
                   "by default with --serial stdio).")
@click.option("--debug", is_flag=True, help="Show tracebacks and registers on errors.")
@_monitor_options
@click.pass_context
def restore(ctx: click.Context, directory: str, serial: Target | None, debugcon: Target,
            until: str | None, timeout: float, debug: bool, qmp: str | None, log_level: str,
            metrics: str | None) -> None:
    """Continue the snapshot in DIRECTORY (written by --snapshot-on or QMP's
    x-snapshot-save) from the instruction it was saved at, the machine built again from the
    description it recorded; its consoles go where these options say. Exits with the
    guest's status, as run and boot.
    """
    from .frontend.restore import restore_run

    if serial is not None:
        timeout = _no_limit_when_interactive(ctx, serial, timeout)
    if until == "":
        raise click.BadParameter("needs some text to wait for", param_hint="'--until'")
    restore_run(directory, serial=serial, debugcon=debugcon, until=until, timeout=timeout,
                debug=debug, qmp=qmp, log_level=log_level, metrics=metrics)


main.add_command(serve)
