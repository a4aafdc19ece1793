"""The project's Linux test kernel snapshotted at its /init marker and built again from the
description its snapshot recorded (``restore_built``): on microvm over virtio-mmio and on pc
over virtio-pci, the restored guest mounts its virtio-blk disk, reads a file from it, and
its console goes on to the end of /init. One boot per board, every assertion on it."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from typing import NamedTuple

import pytest

from tests.conftest import needs_kvm
from tests.linux.conftest import BUILD, linux  # noqa: F401 - the fixture
from tests.linux.test_linux_boot import BOOT_TIMEOUT, DONE, MARKER, cmdline_for
from xinterface.boards.microvm import virtio_mmio_slot
from xinterface.build import build, build_machine
from xinterface.devices.output import Until
from xinterface.snapshot import restore_built, snapshot
from xinterface.spec import Boot, Disk, MachineSpec

pytestmark = needs_kvm
# The pc board's boot to /init took 239 s here at a load of 8 (the microvm's 46 s): twice the
# Linux tests' limit, so the load alone does not fail it.
TIMEOUT = 2 * BOOT_TIMEOUT


class Outcome(NamedTuple):
    before: str                 # the console up to the pause
    after: str                  # the restored machine's console
    reason: str                 # how the restored run ended
    body: dict[str, object]     # the snapshot's manifest
    mmio_ranges: list[str]      # the restored machine's MMIO range devices, by name
    seconds: tuple[float, float, float]   # boot to marker, restore_built, restore to DONE


@pytest.fixture(scope="module", params=["microvm", "pc"])
def outcome(request: pytest.FixtureRequest, linux: dict[str, str],  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    board: str = request.param
    tmp = tmp_path_factory.mktemp(f"linux-{board}")
    disk = tmp / "disk.img"
    subprocess.run([sys.executable, str(BUILD), "ext2", str(disk), "--file",
                    f"hello.txt=hello after the restore on {board}"], check=True)
    extra = ["quiet"]
    if board == "microvm":
        base, gsi = virtio_mmio_slot(0)
        extra.append(f"virtio_mmio.device=512@{base:#x}:{gsi}")
    spec = MachineSpec(memory=64 << 20, cpu="baseline", board=board,
                       disks=(Disk(str(disk), readonly=True),),
                       boot=Boot(kernel=linux["vmlinux"], initrd=linux["initramfs"],
                                 cmdline=cmdline_for(linux, *extra)))
    out = io.BytesIO()
    marked = threading.Event()
    started = time.monotonic()
    with build_machine(spec) as machine:

        def at_marker() -> None:   # on the vCPU thread: it parks as soon as the write returns
            machine.request_pause()
            marked.set()

        build(spec, machine, serial=Until(out, MARKER, at_marker), debugcon=io.BytesIO())
        thread = threading.Thread(target=machine.run, kwargs={"timeout": TIMEOUT},
                                  daemon=True)
        thread.start()
        assert marked.wait(TIMEOUT), out.getvalue()[-3000:]
        assert machine.pause()
        booted = time.monotonic() - started
        body = snapshot(machine, tmp / "snap")
        machine.stop()
        thread.join(60)
    before = out.getvalue().decode(errors="replace")
    after = io.BytesIO()
    began = time.monotonic()
    clone, built = restore_built(tmp / "snap", serial=after, debugcon=io.BytesIO())
    restoring = time.monotonic() - began
    with clone:
        assert built.platform is not None and len(built.platform.virtio) == 1
        result = clone.run(timeout=TIMEOUT)
        ranges = [d.name for d in clone.mmio_bus.routes.devices]
    ran = time.monotonic() - began - restoring
    print(f"linux on {board}: boot to marker {booted:.1f} s, restore_built {restoring:.3f} s, "
          f"restore to the end of /init {ran:.1f} s", file=sys.stderr)
    return Outcome(before, after.getvalue().decode(errors="replace"), result.reason, body,
                   ranges, (booted, restoring, ran))


def test_restored_linux_reads_its_disk_and_its_console_goes_on(outcome: Outcome) -> None:
    before, after = outcome.before, outcome.after
    tail = f"before:\n{before[-1500:]}\nafter:\n{after[-3000:]}"
    assert MARKER.decode() in before and DONE.decode() not in before, tail
    # The restored guest went on from the marker (it never printed it again) ...
    assert MARKER.decode() not in after and "Linux version" not in after, tail
    # ... read /proc/cmdline, found /dev/vda, mounted it and read the file, through the
    # restored virtio-blk queue, its interrupts and the restored COM1.
    assert "cmdline: " in after, tail
    board = "pc" if "pio:0xcf8:PciHost" in outcome.body["devices"] else "microvm"  # type: ignore[operator]
    assert f"disk: hello after the restore on {board}" in after, tail
    assert DONE.decode() in after and "Kernel panic" not in after, tail
    assert outcome.reason == "reset", tail      # /init's reboot -f


def test_the_snapshot_holds_the_description_and_the_devices(outcome: Outcome) -> None:
    body = outcome.body
    spec = body["spec"]
    assert isinstance(spec, dict) and spec["disks"][0]["readonly"] is True
    devices = body["devices"]
    assert isinstance(devices, dict)
    if spec["board"] == "pc":
        host = devices["pio:0xcf8:PciHost"]
        function = host["functions"]["00:03.0"]
        blk = function["state"]["device"]
        # The kernel's virtio-pci driver had placed BAR4 and set the queue up.
        assert any(name == "virtio-pci VirtioBlk" for name in outcome.mmio_ranges)
        assert not any(key.startswith("mmio:") for key in devices)
    else:
        blk = devices["mmio:0xfeb00000:VirtioMmio"]["device"]
        assert "virtio-mmio VirtioBlk" in outcome.mmio_ranges
    assert blk["status"] & 4 and blk["queues"][0]["ready"]     # DRIVER_OK, queue live
    assert blk["queues"][0]["next_avail"] > 0                    # it had served requests
