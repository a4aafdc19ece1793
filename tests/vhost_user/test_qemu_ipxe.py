"""QEMU as the frontend of ``xinterface serve net``: SeaBIOS under Debian's
qemu-system-x86_64 runs Debian's iPXE from the ROM BAR of a ``virtio-net-pci`` whose netdev
is ``-netdev vhost-user`` to our backend; iPXE's own virtio-net driver asks dnsmasq for an
address by DHCP and fetches a script by TFTP, which fetches one more file. dnsmasq and the
backend's TAP are in a network namespace the test creates: no frame leaves it.

Not on kvm_pvm: there QEMU stops at iPXE's first protected-mode IRET, before any frame
(``KVM internal error. Suberror: 1``, emulation failure, ``Code=... <cf>``), with its own
``-netdev user`` as with ours; our VMM finishes that IRET itself (docs/boards.md). Under
QEMU on this host, ``serve net`` is tested with Linux (test_qemu_linux.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_kvm, wait_for
from tests.netns import needs_netns, netns, tap
from tests.vhost_user.test_qemu import QEMU, SEABIOS

pytestmark = [
    needs_kvm, needs_netns,
    pytest.mark.skipif(Path("/sys/module/kvm_pvm").exists(),
                       reason="kvm_pvm: QEMU cannot finish iPXE's protected-mode IRET"),
]

SRC = str(Path(__file__).resolve().parents[2] / "src")
IPXE_ROM = "/usr/lib/ipxe/qemu/pxe-virtio.rom"   # package ipxe-qemu: 1af4:1041 in its header
MAC = "52:54:00:12:34:56"
RUN_TIMEOUT = 900.0   # iPXE runs in emulated protected mode here: minutes under load


def qemu_ipxe_args(sock: Path, top: Path) -> list[str]:
    sercon = top / "sercon-port"
    sercon.write_bytes((0x3F8).to_bytes(2, "little"))   # SeaBIOS's screen on COM1
    # disable-legacy=on: the modern device (1af4:1041), the one the ROM's header names (SeaBIOS
    # runs a PCI ROM only for its device).
    return [QEMU, "-accel", "kvm", "-M", "pc", "-m", "64",
            "-nodefaults", "-display", "none", "-bios", str(SEABIOS),
            "-object", "memory-backend-memfd,id=mem,size=64M,share=on",
            "-numa", "node,memdev=mem",
            "-chardev", f"socket,id=c0,path={sock}", "-netdev", "vhost-user,id=n0,chardev=c0",
            "-device", f"virtio-net-pci,netdev=n0,disable-legacy=on,mac={MAC},"
                       f"romfile={IPXE_ROM},bootindex=1",
            "-fw_cfg", f"name=etc/sercon-port,file={sercon}",
            "-chardev", f"file,id=ser,path={top / 'serial.log'}", "-serial", "chardev:ser"]


def test_ipxe_under_qemu_gets_an_address_and_a_script_through_serve_net(
        tmp_path: Path) -> None:
    (tmp_path / "boot.ipxe").write_text(
        "#!ipxe\necho xinterface: fetched by TFTP from ${next-server}\n"
        "imgfetch tftp://${next-server}/second.txt\necho xinterface: second file fetched\n")
    (tmp_path / "second.txt").write_text("fetched by the script\n")
    sock, serial = tmp_path / "net.sock", tmp_path / "serial.log"
    said, served = tmp_path / "dnsmasq.log", tmp_path / "serve.err"
    env = {**os.environ, "PYTHONPATH": SRC}
    with netns() as ns, said.open("w") as said_to, served.open("w") as served_to:
        tap(ns, "tap0", "10.0.2.2/24")
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", ns, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
             "--user=root", "--port=0", "--interface=tap0", "--bind-interfaces",
             "--dhcp-range=10.0.2.15,10.0.2.20,1h", "--leasefile-ro", "--log-dhcp",
             "--pid-file=", "--enable-tftp", f"--tftp-root={tmp_path}",
             "--dhcp-boot=boot.ipxe"], stdout=subprocess.DEVNULL, stderr=said_to)
        backend = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "xinterface", "serve", "net",
             "--tap", "tap0", "--socket-path", str(sock)], env=env,
            stdout=subprocess.DEVNULL, stderr=served_to)
        qemu: subprocess.Popen[bytes] | None = None
        try:
            assert wait_for(sock.exists, 60), served.read_text()
            qemu = subprocess.Popen(qemu_ipxe_args(sock, tmp_path), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)

            def done() -> bool:
                assert qemu is not None and qemu.poll() is None, qemu.stderr
                return serial.exists() and b"second file fetched" in serial.read_bytes()

            finished = wait_for(done, RUN_TIMEOUT)
        finally:
            for process in (qemu, backend, dnsmasq):
                if process is not None and process.poll() is None:
                    process.terminate()
            for process in (qemu, backend, dnsmasq):
                if process is not None:
                    process.wait(30)
    out = serial.read_text(errors="replace") if serial.exists() else ""
    log = said.read_text()
    assert finished, out[-2000:]
    assert "iPXE (PCI 00:02.0) starting execution" in out, out[-2000:]
    assert f"net0: {MAC} using virtio-net on 0000:00:02.0" in out, out[-2000:]
    # The address iPXE reports is the one dnsmasq acknowledged to our MAC, the script and
    # the file the script asked for went to it by TFTP.
    acked = [line.split()[-2] for line in log.splitlines()
             if "DHCPACK(tap0)" in line and MAC in line]
    assert acked and f"net0: {acked[-1]}/255.255.255.0 gw 10.0.2.2" in out, log[-2000:]
    assert "xinterface: fetched by TFTP from 10.0.2.2" in out
    for name in ("boot.ipxe", "second.txt"):
        assert f"sent {tmp_path / name} to {acked[-1]}" in log, log[-2000:]
    assert backend.returncode == 0 and served.read_text() == "", served.read_text()
