"""Linux on our VMM with its disk in another process: the test kernel on microvm
(virtio-mmio) mounts an ext2 image that Debian's qemu-storage-daemon serves over
vhost-user-blk, and reads a file from it."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import xinterface as xi
from tests.conftest import needs_kvm, wait_for
from tests.linux.conftest import BUILD
from tests.linux.test_linux_boot import BOOT_TIMEOUT, DONE, MARKER, cmdline_for
from tests.vhost_user.test_frontend import qsd_command
from xinterface.boards.microvm import attach_microvm, virtio_mmio_slot
from xinterface.loader.linux import load_linux
from xinterface.spec import VhostUser
from xinterface.vhost_user.device import VhostUserBlk

pytestmark = needs_kvm


def test_linux_mounts_ext2_served_by_qemu_storage_daemon(linux: dict[str, str],
                                                         tmp_path: Path) -> None:
    disk, sock = tmp_path / "disk.img", tmp_path / "blk.sock"
    subprocess.run([sys.executable, str(BUILD), "ext2", str(disk), "--file",
                    "hello.txt=hello through vhost-user"], check=True)
    daemon = subprocess.Popen(qsd_command(disk, sock))
    try:
        assert wait_for(sock.exists, 30)
        base, gsi = virtio_mmio_slot(0)
        cmdline = cmdline_for(linux, "quiet", f"virtio_mmio.device=512@{base:#x}:{gsi}")
        out = io.BytesIO()
        with xi.Machine(memory=64 << 20, irqchip=True, cpu="baseline") as m:
            platform = attach_microvm(m, serial=out, debugcon=io.BytesIO(),
                                      vhost_user=[VhostUser("blk", str(sock))])
            assert m.memory is not None
            load_linux(m.memory, [loop.vcpu for loop in m.vcpus],
                       Path(linux["vmlinux"]).read_bytes(),
                       initrd=Path(linux["initramfs"]).read_bytes(), cmdline=cmdline)
            result = m.run(timeout=BOOT_TIMEOUT)
            device = platform.virtio[0].device
            assert isinstance(device, VhostUserBlk)
            console = out.getvalue().decode(errors="replace")
            assert MARKER.decode() in console, console[-3000:]
            assert "disk: hello through vhost-user" in console, console[-3000:]
            assert DONE.decode() in console and result.reason == "reset", console[-3000:]
            # Linux waits for interrupts: the call fds were relayed as the line.
            assert device.stats["call"] > 0 and not device.stats["backend_lost"]
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
