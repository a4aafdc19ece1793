"""The command line's rough edges (bad values, unreadable files, terminals, signals), one test
each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.harness import Terminal, error_lines, xinterface
from tests.conftest import EXAMPLES, GUESTS, needs_kvm
from xinterface.frontend.options import parse_size

SEABIOS = Path("/usr/share/seabios/bios-microvm.bin")


def write_source(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"        {line}\n" for line in lines))
    return path


def link_elf(source: Path, bits: int, out: Path) -> Path:
    """``source`` assembled and linked at 0x1000 into ``out`` as an ELF executable, as
    examples/Makefile does."""
    obj, elf = out / f"{source.stem}.o", out / f"{source.stem}.elf"
    emulation = "elf_x86_64" if bits == 64 else "elf_i386"
    subprocess.run(["as", f"--{bits}", "-o", obj, source], check=True)
    subprocess.run(["ld", "-m", emulation, "-N", "--build-id=none", "-Ttext=0x1000", "-e",
                    "0x1000", "-o", elf, obj], check=True)
    return elf


# 1 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["run", str(EXAMPLES / "hello-real.S")],
                                     ["boot", "--bios", str(SEABIOS)]])
def test_01_negative_timeout_is_a_usage_error(command: list[str]) -> None:
    done = xinterface(*command, "--timeout", "-1")
    assert done.returncode == 2
    assert error_lines(done.stderr) == [
        "Error: Invalid value for '--timeout': '-1': give 0 or more seconds (0: no limit)"]


# 2 ---------------------------------------------------------------------------------------------
@needs_kvm
def test_02_mode_comes_from_the_image_and_a_contradiction_is_refused(tmp_path: Path) -> None:
    for mode in ("protected", "long"):
        done = xinterface("run", EXAMPLES / f"hello-{mode}.S")
        assert (done.returncode, done.stdout) == (0, f"Hello from {mode} mode\n"), done.stderr
    elf = link_elf(EXAMPLES / "hello-long.S", 64, tmp_path)
    done = xinterface("run", elf)
    assert (done.returncode, done.stdout) == (0, "Hello from long mode\n"), done.stderr
    for image, mode, says in [(EXAMPLES / "hello-long.S", "real", "long-mode code"),
                              (EXAMPLES / "hello-protected.S", "long", "protected-mode code"),
                              (elf, "protected", "ELF64")]:
        done = xinterface("run", image, "--mode", mode)
        assert done.returncode == 1 and done.stdout == ""
        assert says in done.stderr and f"--mode is {mode}" in done.stderr


# 3 ---------------------------------------------------------------------------------------------
@needs_kvm
def test_03_what_cannot_be_a_guest_is_refused_and_a_lowercase_s_is_a_source(
        tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mov $1, %al\nthis is text\n")
    (tmp_path / "empty.bin").write_bytes(b"")
    for name, says in [("notes.txt", "is text, not a guest binary"), ("empty.bin", "is empty")]:
        done = xinterface("run", tmp_path / name)
        assert done.returncode == 1
        assert error_lines(done.stderr) == [ln for ln in done.stderr.splitlines()]
        assert says in done.stderr
    lower = tmp_path / "hello.s"
    lower.write_text((EXAMPLES / "hello-real.S").read_text())
    done = xinterface("run", lower)
    assert (done.returncode, done.stdout) == (1, "Hello from real mode\n")


# 4 ---------------------------------------------------------------------------------------------
@needs_kvm
def test_04_an_image_larger_than_memory_says_so_once(tmp_path: Path) -> None:
    import xinterface as xi

    image = tmp_path / "big.bin"
    image.write_bytes(b"\xf4" * (62 << 10))
    done = xinterface("run", image, "--mode", "protected", "--memory", "64K")
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        f"xinterface: {image}: 63488 bytes at 0x1000 end at 0x10800, past the guest's RAM "
        "(0x10000 bytes): raise --memory"]
    image.write_bytes(b"\xf4" * (80 << 10))  # larger than RAM: refused before it is read
    done = xinterface("run", image, "--mode", "protected", "--memory", "64K")
    assert error_lines(done.stderr) == [
        f"xinterface: {image} is 81920 bytes, more than the guest's RAM (0x10000 bytes): "
        "raise --memory"]
    with xi.Machine(memory=64 << 10) as m, pytest.raises(xi.XInterfaceError) as info:
        m.load_flat(b"\xf4" * (80 << 10), mode="protected")
    assert str(info.value).count("EFAULT") == 1


# 5 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--memory", "1M"], ["--gpa", "0x20000"]])
def test_05_past_64k_in_real_mode_suggests_protected_mode(tmp_path: Path,
                                                          args: list[str]) -> None:
    image = tmp_path / "big.bin"
    image.write_bytes(b"\xf4" * (80 << 10) if args[0] == "--memory" else b"\xf4")
    done = xinterface("run", image, *args)
    assert done.returncode == 1
    assert "use --mode protected or long" in done.stderr
    assert len(error_lines(done.stderr)) == 1


# 6 ---------------------------------------------------------------------------------------------
@needs_kvm
def test_06_a_bare_memory_number_is_mib_as_qemu_reads_it() -> None:
    assert parse_size("3") == 3 << 20
    assert (parse_size("4096B"), parse_size("512K"), parse_size("1.5G")) == (
        4096, 512 << 10, 3 << 29)
    done = xinterface("run", EXAMPLES / "hello-real.S", "--memory", "3")
    assert (done.returncode, done.stdout) == (1, "Hello from real mode\n"), done.stderr


# 7 ---------------------------------------------------------------------------------------------
def test_07_assembler_messages_keep_their_lines(tmp_path: Path) -> None:
    source = write_source(tmp_path / "bad.S", ".code16", "movq %rax, %cr9", "frobnicate")
    done = xinterface("run", source)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == f"xinterface: as failed on {source}:"
    assert f"{source}:2: Error: bad register name `%rax'" in lines
    assert f"{source}:3: Error: no such instruction: `frobnicate'" in lines


# 8 ---------------------------------------------------------------------------------------------
@needs_kvm
def test_08_an_emulation_failure_is_decoded(tmp_path: Path) -> None:
    # An x87 load from MMIO: KVM must emulate the access and its emulator has no x87 (the
    # kernel's own selftests use flds the same way).
    source = write_source(tmp_path / "flds.S", ".code32", "nop", "flds 0xd0000000", "hlt")
    done = xinterface("run", source)
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        "xinterface: vCPU 0: the guest executed an instruction KVM cannot emulate at CS:IP "
        "0008:00001001 (protected mode); the bytes there: d9 05 00 00 00 d0 f4 00 00 00 00 00 "
        "00 00 00 (KVM_EXIT_INTERNAL_ERROR, emulation failure) (--debug shows registers)"]


# 9 ---------------------------------------------------------------------------------------------
@needs_kvm
def test_09_debug_prints_the_error_and_registers_once() -> None:
    done = xinterface("run", GUESTS / "triple_fault.S", "--debug")
    assert done.returncode == 1
    assert done.stderr.startswith("Traceback (most recent call last):")
    assert done.stderr.count("xinterface: vCPU 0: triple fault") == 1
    assert done.stderr.count("rip=") == 1
    assert "GuestError: vCPU 0" not in done.stderr


# 10 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["run", "/nonexistent.bin"],
                                     ["boot", "--bios", "/nonexistent.bin"]])
def test_10_a_missing_file_is_a_usage_error_for_every_command(command: list[str]) -> None:
    done = xinterface(*command)
    assert done.returncode == 2
    assert "'/nonexistent.bin' does not exist" in done.stderr


# 11 --------------------------------------------------------------------------------------------
@needs_kvm
def test_11_an_unwritable_cache_falls_back_to_a_private_temporary_one(tmp_path: Path) -> None:
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("")
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, HOME=str(blocker), XDG_CACHE_HOME=str(blocker / "cache"),
               TMPDIR=str(temp))
    # A source no cache has seen: it must be assembled, then kept somewhere.
    source = write_source(tmp_path / "fresh.S", ".code16", f"# {time.time_ns()}", "hlt")
    done = xinterface("run", source, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    private = temp / f"xinterface-{os.getuid()}"
    assert private.stat().st_mode & 0o077 == 0
    assert [p.name.startswith("fresh-") for p in (private / "asm").iterdir()] == [True]


# 12 --------------------------------------------------------------------------------------------
def test_12_an_unwritable_output_names_its_option() -> None:
    done = xinterface("boot", "--bios", SEABIOS, "--debugcon", "/nonexistent/dir/x")
    assert done.returncode == 2
    assert error_lines(done.stderr) == [
        "Error: Invalid value for '--debugcon': cannot write /nonexistent/dir/x: No such file "
        "or directory"]


# 13 --------------------------------------------------------------------------------------------
@needs_kvm
def test_13_output_ended_mid_line_leaves_the_prompt_its_own_line(tmp_path: Path) -> None:
    source = write_source(tmp_path / "abc.S", ".code16", "mov $0xe9, %dx", "mov $'a', %al",
                          "out %al, (%dx)", "mov $'b', %al", "out %al, (%dx)", "hlt")
    with Terminal("run", source) as term:
        assert term.wait() == 0
        assert term.screen == b"ab\r\n"
    assert xinterface("run", source).stdout == "ab"  # a pipe gets exactly the guest's bytes


# 14 --------------------------------------------------------------------------------------------
@needs_kvm
def test_14_too_little_memory_for_the_firmware_is_refused_up_front() -> None:
    done = xinterface("boot", "--bios", SEABIOS, "--memory", "512K")
    assert done.returncode == 2
    assert "SeaBIOS needs 640K or more" in done.stderr
    # The floor boots; so does RAM that ends inside the BIOS alias below 1 MiB.
    for memory in ("640K", "1020K"):
        done = xinterface("boot", "--bios", SEABIOS, "--memory", memory, "--debugcon", "-",
                          "--until", "enter handle_19")
        assert done.returncode == 0, done.stderr
        assert "No space for init relocation" not in done.stdout


# 15 --------------------------------------------------------------------------------------------
def test_15_plot_without_matplotlib_is_refused_before_measuring(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    result = tmp_path / "bench.json"
    done = xinterface("bench", "--quick", "--plot", tmp_path / "plot.png", "--json", result,
                      env=dict(os.environ, PYTHONPATH=path))
    assert done.returncode == 2
    assert "Invalid value for '--plot': needs matplotlib" in done.stderr
    assert not result.exists()


# 16 --------------------------------------------------------------------------------------------
@needs_kvm
def test_16_help_defaults_and_ctrl_c() -> None:
    def flat(text: str) -> str:
        return " ".join(text.split())

    run_help = flat(xinterface("run", "--help").stdout)
    assert "[default: 0x1000]" in run_help
    assert "--vcpus INTEGER RANGE vCPUs" in run_help
    bench_help = flat(xinterface("bench", "--help").stdout)
    assert "guest on QEMU" in bench_help and "this VMM" not in bench_help
    boot_help = flat(xinterface("boot", "--help").stdout)
    assert "--vcpus" in boot_help
    # One stream per device by default: the serial console on stdout, the debug console off.
    assert "(stdout) or none. [default: none]" in boot_help
    # Ctrl-C: 130, as shells expect, and no "Aborted!".
    proc = subprocess.Popen([sys.executable, "-m", "xinterface", "run", GUESTS / "serial_echo.S",
                             "--serial", "-", "--timeout", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.read(5) == b"ready"  # the guest runs, waiting for input
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert b"Aborted" not in err and b"Traceback" not in err


@needs_kvm
def test_16_boot_takes_vcpus() -> None:
    done = xinterface("boot", "--bios", SEABIOS, "--vcpus", "2", "--memory", "32M",
                      "--debugcon", "-", "--until", "enter handle_19")
    assert done.returncode == 0, done.stderr
    assert "Found 2 cpu(s)" in done.stdout
