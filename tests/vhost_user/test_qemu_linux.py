"""QEMU as the frontend of a Linux guest: the project's test kernel under Debian's
qemu-system-x86_64 (``-M pc``, virtio-pci) mounts an ext2 image served by ``xinterface serve
blk``, reads a file and writes one, reads ``/dev/hwrng`` from ``xinterface serve rng``, and
pings through a ``virtio-net-pci`` whose netdev is ``-netdev vhost-user`` to ``xinterface
serve net`` on a TAP in a network namespace the test creates; over the same path busybox's
udhcpc gets an address from dnsmasq (in the namespace, on the TAP) and busybox's tftp a file
from it. One QEMU boot (about a minute here) carries the three devices; after QEMU exits the
image holds the guest's file and ``e2fsck -n`` finds it clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import needs_kvm
from tests.linux.conftest import BUILD, linux  # noqa: F401 (the session fixture)
from tests.linux.test_linux_boot import cmdline_for
from tests.netns import needs_netns, netns, tap
from tests.vhost_user.test_frontend_linux import tap_packets
from tests.vhost_user.test_qemu import QEMU, Serve

pytestmark = [needs_kvm, needs_netns]

HELLO = "hello from the ext2 image served over vhost-user"
TFTP_FILE, TFTP_TEXT = "hello-tftp.txt", "fetched by TFTP through serve net"
MAC = "52:54:00:12:34:58"
DHCP_FIRST, DHCP_LAST = 100, 120   # 10.0.2.100-120: not the ping step's static 10.0.2.15
MEMORY_MIB = 128
BOOT_TIMEOUT = 1500.0   # about 65 s on an idle host; a loaded one shares its two cores


@dataclass
class LinuxRun:
    console: str
    image: Path
    blk_status: int
    blk_stderr: str
    rng_status: int
    rng_stderr: str
    net_status: int
    net_stderr: str
    tap_packets: tuple[int, int]   # the TAP's (received, sent), seen in the namespace
    dnsmasq_log: str
    tftp_root: Path


def qemu_linux_args(linux: dict[str, str], blk: Path, rng: Path, net: Path,  # noqa: F811
                    console: Path, cmdline: str) -> list[str]:
    # -kernel vmlinux: the PVH entry (QEMU's pvh.bin); a bzImage would decompress itself in
    # emulated CPL0 code for minutes on kvm_pvm. -cpu qemu64,+xsaveerptr: the CPU model the
    # notes measured the test kernel under QEMU with here. -no-reboot: the guest's reset
    # (reboot=p, port 0xcf9) ends QEMU.
    return [QEMU, "-accel", "kvm", "-M", "pc", "-cpu", "qemu64,+xsaveerptr",
            "-m", str(MEMORY_MIB), "-nodefaults", "-display", "none", "-no-reboot",
            "-object", f"memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on",
            "-numa", "node,memdev=mem",
            "-kernel", linux["vmlinux"], "-initrd", linux["initramfs"], "-append", cmdline,
            "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
            "-chardev", f"socket,id=blk,path={blk}", "-device", "vhost-user-blk-pci,chardev=blk",
            "-chardev", f"socket,id=rng,path={rng}", "-device", "vhost-user-rng-pci,chardev=rng",
            "-chardev", f"socket,id=net,path={net}", "-netdev", "vhost-user,id=n0,chardev=net",
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC}"]


@pytest.fixture(scope="module")
def run(linux: dict[str, str], tmp_path_factory: pytest.TempPathFactory  # noqa: F811
        ) -> LinuxRun:
    assert shutil.which(QEMU), f"{QEMU} is missing: scripts/debian-packages.txt installs it"
    config = Path(linux["config"]).read_text()
    assert "CONFIG_HW_RANDOM_VIRTIO=y" in config, "guests/linux/config.fragment lost it"
    top = tmp_path_factory.mktemp("qemu-linux")
    image = top / "disk.img"
    subprocess.run([sys.executable, str(BUILD), "ext2", str(image), "--file",
                    f"hello.txt={HELLO}"], check=True, capture_output=True, timeout=60)
    for kind in ("blk", "rng", "net", "tftp"):
        (top / kind).mkdir()
    (top / "tftp" / TFTP_FILE).write_text(TFTP_TEXT + "\n")
    said = top / "dnsmasq.log"
    with netns() as ns, said.open("w") as said_to, _dnsmasq(ns, top / "tftp", said_to):
        blk = Serve(top / "blk", "blk", str(image))
        try:
            rng = Serve(top / "rng", "rng")
            try:
                net = Serve(top / "net", "net", "--tap", "xitap0",
                            prefix=("ip", "netns", "exec", ns))
                try:
                    text = _boot(linux, top, blk.socket, rng.socket, net.socket)
                    packets = tap_packets(ns, "xitap0")
                finally:
                    net_status = net.stop()
            finally:
                rng_status = rng.stop()
        finally:
            blk_status = blk.stop()
    return LinuxRun(text, image, blk_status, blk.stderr.read_text(), rng_status,
                    rng.stderr.read_text(), net_status, net.stderr.read_text(), packets,
                    said.read_text(), top / "tftp")


@contextmanager
def _dnsmasq(ns: str, tftp_root: Path, log: IO[str]) -> Iterator[None]:
    # The TAP first: dnsmasq binds to it (--bind-interfaces). --port=0: no DNS; --no-ping: no
    # ICMP probe of an address before offering it (seconds of emulated guest time saved).
    tap(ns, "xitap0", "10.0.2.2/24")
    dnsmasq = subprocess.Popen(
        ["ip", "netns", "exec", ns, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
         "--user=root", "--port=0", "--interface=xitap0", "--bind-interfaces",
         f"--dhcp-range=10.0.2.{DHCP_FIRST},10.0.2.{DHCP_LAST},1h", "--no-ping",
         "--leasefile-ro", "--log-dhcp", "--pid-file=", "--enable-tftp",
         f"--tftp-root={tftp_root}"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        yield
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(30)


def _boot(linux: dict[str, str], top: Path, blk: Path, rng: Path,  # noqa: F811
          net: Path) -> str:
    console = top / "console.log"
    cmdline = cmdline_for(linux, "quiet", "xinterface.write", "xinterface.hwrng",
                          "xinterface.net", f"xinterface.dhcp={TFTP_FILE}")
    stderr = top / "qemu.err"
    with stderr.open("wb") as err:
        qemu = subprocess.Popen(qemu_linux_args(linux, blk, rng, net, console, cmdline),
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        status: int | None = qemu.wait(timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        status = None
        qemu.kill()
        qemu.wait()
    text = console.read_text(errors="replace") if console.exists() else ""
    assert status == 0, (status, stderr.read_text()[-2000:], text[-3000:])
    return text


def test_linux_under_qemu_mounts_reads_and_writes_ext2_from_serve_blk(run: LinuxRun) -> None:
    assert "XINTERFACE-INIT-DONE" in run.console, run.console[-3000:]
    assert f"disk: {HELLO}" in run.console, run.console[-3000:]
    assert "disk: wrote guest.txt" in run.console, run.console[-3000:]
    assert run.blk_status == 0 and run.blk_stderr == "", run.blk_stderr


def test_the_image_holds_the_guests_file_and_is_clean_after_qemu_exits(run: LinuxRun) -> None:
    fsck = subprocess.run(["e2fsck", "-n", "-f", str(run.image)], capture_output=True,
                          text=True, timeout=60)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    cat = subprocess.run(["debugfs", "-R", "cat /guest.txt", str(run.image)],
                         capture_output=True, text=True, timeout=60)
    assert cat.stdout == "written by the guest\n", cat.stdout + cat.stderr


def test_linux_under_qemu_reads_dev_hwrng_from_serve_rng(run: LinuxRun) -> None:
    found = re.search(r"^hwrng:((?: [0-9a-f]{2}){16})\s*$", run.console, re.MULTILINE)
    assert found, run.console[-3000:]
    data = bytes.fromhex(found[1])
    assert len(set(data)) > 4, data   # 16 random bytes, not a zeroed buffer
    assert run.rng_status == 0 and run.rng_stderr == "", run.rng_stderr


def test_linux_under_qemu_pings_the_tap_through_serve_net(run: LinuxRun) -> None:
    assert "net: 10.0.2.2 answered" in run.console, run.console[-3000:]
    received, sent = run.tap_packets
    assert received >= 2 and sent >= 2, run.tap_packets   # ARP and ICMP, both ways
    assert run.net_status == 0 and run.net_stderr == "", run.net_stderr


def test_linux_under_qemu_gets_a_lease_from_dnsmasq_and_a_file_by_tftp(run: LinuxRun) -> None:
    found = re.search(r"^dhcp: (10\.0\.2\.(\d+)) from 10\.0\.2\.2\s*$", run.console,
                      re.MULTILINE)
    assert found and DHCP_FIRST <= int(found[2]) <= DHCP_LAST, run.console[-3000:]
    # The address the guest configured is the one dnsmasq acknowledged to its MAC, and the
    # file went by TFTP to that address.
    acked = re.findall(rf"DHCPACK\(xitap0\) (\S+) {MAC}", run.dnsmasq_log)
    assert acked and acked[-1] == found[1], run.dnsmasq_log[-2000:]
    assert f"tftp: {TFTP_TEXT}" in run.console, run.console[-3000:]
    assert f"sent {run.tftp_root / TFTP_FILE} to {found[1]}" in run.dnsmasq_log, \
        run.dnsmasq_log[-2000:]
