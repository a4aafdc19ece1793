"""Linux on the pc board takes its virtio-pci interrupts through MSI-X: one boot with a disk
of ours (vda) and one that Debian's qemu-storage-daemon serves over vhost-user-blk (vdb).
The guest's /proc/interrupts shows PCI-MSI vectors for both queues; ours were messages from
this process with no INTx, and the backend's call fd reached the guest through KVM alone
(nothing relayed here) while the guest read 4 KiB blocks from it with O_DIRECT."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import needs_kvm, wait_for
from tests.linux.conftest import BUILD
from tests.linux.test_linux_boot import BOOT_TIMEOUT, DONE, MARKER, cmdline_for
from tests.vhost_user.test_frontend import qsd_command
from xinterface.build import build, build_machine
from xinterface.devices.pci.irq import IntxLine
from xinterface.spec import Boot, Disk, MachineSpec, VhostUser
from xinterface.vhost_user.device import VhostUserBlk
from xinterface.virtio.pci import VirtioPci

pytestmark = needs_kvm

READS = 16
# Two disks and the reads take the pc board past the single-disk boots' budget under load.
TIMEOUT = 2 * BOOT_TIMEOUT


def test_linux_on_pc_uses_msix_for_our_disk_and_irqfds_for_a_vhost_user_one(
        linux: dict[str, str], tmp_path: Path) -> None:
    ours, served, sock = tmp_path / "ours.img", tmp_path / "served.img", tmp_path / "blk.sock"
    for image, text in ((ours, "hello from our disk"), (served, "hello through vhost-user")):
        subprocess.run([sys.executable, str(BUILD), "ext2", str(image), "--file",
                        f"hello.txt={text}"], check=True)
    daemon = subprocess.Popen(qsd_command(served, sock))
    try:
        assert wait_for(sock.exists, 30)
        cmdline = cmdline_for(linux, "quiet", "xinterface.interrupts",
                              f"xinterface.readloop={READS}")
        spec = MachineSpec(board="pc", cpu="baseline",
                           boot=Boot(kernel=linux["vmlinux"], initrd=linux["initramfs"],
                                     cmdline=cmdline),
                           disks=(Disk(str(ours), True),),
                           vhost_user=(VhostUser("blk", str(sock)),))
        out = io.BytesIO()
        with build_machine(spec) as m:
            built = build(spec, m, serial=out, debugcon=io.BytesIO())
            assert built.platform is not None
            result = m.run(timeout=TIMEOUT)
            transports = built.platform.virtio
            console = out.getvalue().decode(errors="replace")
            tail = console[-3000:]
            assert MARKER.decode() in console and DONE.decode() in console, tail
            assert result.reason == "reset", tail
            assert "disk: hello from our disk" in console, tail
            own, proxy = transports
            assert isinstance(own, VirtioPci) and isinstance(proxy, VirtioPci)
            assert own.msix is not None and proxy.msix is not None
            # The guest's view: each queue's vector is a PCI-MSI interrupt that came.
            irqs = {name: int(count) for count, name in re.findall(
                r"irq: +\d+: +(\d+) +PCI-MSI \S+ +(virtio\d-\S+)", console)}
            assert irqs.get("virtio0-req.0", 0) > 0 and irqs.get("virtio1-req.0", 0) > 0, tail
            assert "virtio0-config" in irqs and "virtio1-config" in irqs, tail
            # Ours: every interrupt a message, INTx never raised.
            assert own.msix.enabled and own.msix.stats["fired"] > 0
            assert own.stats["msix_interrupts"] == own.stats["interrupts"] > 0
            assert isinstance(own.irq, IntxLine) and own.irq.raised == 0
            # The backend's: its call fd bound to KVM, nothing relayed by this process.
            device = proxy.device
            assert isinstance(device, VhostUserBlk)
            assert device.stats["call_irqfd_bound"] >= 1 and device.stats["call"] == 0
            assert proxy.stats["interrupts"] == 0 and not device.stats["backend_lost"]
            # The guest's reads from the served disk completed (/proc/diskstats).
            stat = re.search(r"readloop: vdb reads (\d+)", console)
            assert stat is not None and int(stat.group(1)) >= READS + 1, tail
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
