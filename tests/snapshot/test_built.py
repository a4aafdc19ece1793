"""``restore_built``: a machine :func:`xinterface.build.build` built, snapshotted mid-boot
and built again from the description its snapshot recorded (SeaBIOS on the microvm board:
fw_cfg, CMOS, COM1 and the reset ports, all saved), and what it refuses."""

from __future__ import annotations

import errno
import io
import threading
from pathlib import Path

import pytest

from tests.conftest import needs_kvm
from xinterface import Machine
from xinterface.build import build, build_machine
from xinterface.devices import Until
from xinterface.snapshot import SnapshotError, restore_built, snapshot
from xinterface.spec import Boot, MachineSpec

pytestmark = needs_kvm
BIOS = Path("/usr/share/seabios/bios-microvm.bin")


def test_seabios_snapshotted_mid_boot_goes_on_after_restore_built(tmp_path: Path) -> None:
    spec = MachineSpec(memory=32 << 20, boot=Boot(firmware=str(BIOS)))
    early = threading.Event()
    log = io.BytesIO()
    with build_machine(spec) as machine:

        def found() -> None:   # on the vCPU thread: it parks as soon as the write returns
            machine.request_pause()
            early.set()

        build(spec, machine, debugcon=Until(log, b"Found QEMU fw_cfg\n", found),
              serial=io.BytesIO())
        thread = threading.Thread(target=machine.run, kwargs={"timeout": 120}, daemon=True)
        thread.start()
        assert early.wait(60), log.getvalue()[-2000:]
        assert machine.pause()
        before = log.getvalue()
        body = snapshot(machine, tmp_path / "s")
        machine.stop()
        thread.join(30)
    assert body["spec"] == spec.to_json()
    assert "enter handle_19" not in before.decode(errors="replace")
    log2 = io.BytesIO()
    clone, built = restore_built(tmp_path / "s", serial=io.BytesIO(),
                                 debugcon=(watch := Until(log2, b"enter handle_19",
                                                          lambda: clone.stop())))
    with clone:
        assert built.platform is not None and built.kernel is None
        assert built.feed == built.platform.uart.feed
        result = clone.run(timeout=120)
    text = log2.getvalue().decode(errors="replace")
    assert watch.matched and result.reason == "stopped", text[-2000:]
    # It went on from the snapshot, not from the reset vector, and read fw_cfg's files
    # (the e820 table) through the restored device.
    assert "BUILD: gcc" not in text and "Found QEMU fw_cfg" not in text
    assert text.startswith("QEMU fw_cfg DMA interface supported"), text[:500]
    for line in ("qemu/e820: addr 0x0000000000000000 len 0x0000000002000000 [RAM]",
                 "Found 1 cpu(s)", "ACPI: parse DSDT", "e820 map has 6 items"):
        assert line in text, text


def test_a_machine_not_built_from_a_description_is_refused(tmp_path: Path) -> None:
    with Machine(memory=4 << 20) as machine:
        body = snapshot(machine, tmp_path / "bare")
    assert body["spec"] is None
    with pytest.raises(SnapshotError) as info:
        restore_built(tmp_path / "bare")
    assert info.value.errno == errno.EINVAL and "restore(path, attach" in str(info.value)
