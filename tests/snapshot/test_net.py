"""virtio-net snapshotted with frames on the wire: the assembled net guest sends numbered
frames through a TAP in a network namespace the test made; paused mid-stream, snapshotted,
and restored on the same TAP, it sends the rest: every frame once, in order. And a restore
of a described machine needs its TAP (another one for a clone: ``taps``). Traffic never
leaves the namespace."""

from __future__ import annotations

import errno
import io
import socket
import threading
import time
from pathlib import Path
from typing import BinaryIO, cast

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from tests.netns import inside, needs_netns, netns, tap
from xinterface.bench import net
from xinterface.bench.marks import Marks
from xinterface.build import build, build_machine
from xinterface.snapshot import SnapshotError, restore, restore_built, snapshot
from xinterface.spec import Boot, MachineSpec, Net
from xinterface.virtio.mmio import VirtioMmio
from xinterface.virtio.net import TapBackend, VirtioNet

pytestmark = [needs_kvm, needs_netns]
COUNT = 600
SLOT = 3          # the guest scans the virtio-mmio slots
PAUSE_AT = 100    # frames seen on the wire before the pause


def _attach(ns: str, machine: xi.Machine, made: list[VirtioNet]) -> None:
    with inside(ns):      # the TAP is opened in the namespace it lives in
        backend = TapBackend("xisnap0")
    device = VirtioNet(backend, mac=net.GUEST_MAC)
    made.append(device)
    VirtioMmio(device, net.MMIO_BASE + 0x200 * SLOT).attach(xi.bind(machine))


def _sequence(frames: list[bytes]) -> list[int]:
    return [int.from_bytes(f[14:18], "little") for f in frames
            if len(f) >= 18 and f[12:14] == b"\x88\xb5"]


def test_frames_in_flight_go_on_after_restore(tmp_path: Path) -> None:
    with netns() as ns:
        tap(ns, "xisnap0", "10.0.2.2/24")
        with inside(ns):
            capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
            capture.bind(("xisnap0", 0))
        capture.settimeout(3)
        got: list[bytes] = []

        def read() -> None:
            while True:
                try:
                    got.append(capture.recv(4096))
                except (TimeoutError, OSError):
                    return

        reader = threading.Thread(target=read)
        reader.start()
        first, second = Marks(), Marks()
        made: list[VirtioNet] = []
        try:
            with xi.Machine(memory=net.MEMORY, console=cast(BinaryIO, first)) as machine:
                machine.load_flat(net.net_image("tx", COUNT), gpa=net.BOOT_GPA,
                                  mode="protected")
                machine.set_entry(net.ENTRY)
                _attach(ns, machine, made)
                thread = threading.Thread(target=machine.run, kwargs={"timeout": 60})
                thread.start()
                deadline = time.monotonic() + 30
                while len(got) < PAUSE_AT and time.monotonic() < deadline:
                    time.sleep(0.001)
                assert machine.pause()
                sent_before = made[0].stats["tx_packets"]
                body = snapshot(machine, tmp_path / "net")
                machine.stop()
                thread.join(30)
            made[0].close()
            assert 0 < sent_before < COUNT, sent_before
            clone = restore(tmp_path / "net", console=cast(BinaryIO, second),
                            attach=lambda m: _attach(ns, m, made))
            with clone:
                result = clone.run(timeout=60)
            made[1].close()
        finally:
            for device in made:
                device.close()
            reader.join(30)
            capture.close()
    assert (result.reason, result.exit_code) == ("exit", 1), bytes(second.text)
    assert bytes(first.text) == b"RS" and bytes(second.text) == b"E"
    saved = body["devices"][f"mmio:{net.MMIO_BASE + 0x200 * SLOT:#x}:VirtioMmio"]["device"]
    assert saved["queues"][1]["ready"] and saved["queues"][1]["next_avail"] == sent_before
    # Every frame crossed the TAP once, in order: the original's, then the clone's.
    assert _sequence(got) == list(range(COUNT))
    assert made[1].stats["tx_packets"] == COUNT - sent_before


def test_restore_built_needs_the_tap_and_takes_another(tmp_path: Path) -> None:
    spec = MachineSpec(memory=16 << 20, boot=Boot(firmware=net.SEABIOS_MICROVM),
                       nets=(Net("xisnap0"),))
    with netns() as ns:
        tap(ns, "xisnap0", "10.0.2.2/24")
        tap(ns, "xisnap1", "10.0.3.2/24")
        with inside(ns), build_machine(spec) as machine:
            build(spec, machine, serial=io.BytesIO())
            snapshot(machine, tmp_path / "s")          # idle: before the firmware ran
        # Here, outside the namespace, there is no xisnap0: refused, nothing built.
        with pytest.raises(SnapshotError) as info:
            restore_built(tmp_path / "s")
        assert info.value.errno == errno.ENOENT and "nets[0]" in str(info.value)
        assert "xisnap0" in str(info.value) and "\n" not in str(info.value)
        with inside(ns):
            clone, built = restore_built(tmp_path / "s", taps=["xisnap1"])
        with clone:
            assert built.platform is not None
            device = built.platform.virtio[0].device
            assert isinstance(device, VirtioNet)
            backend = device.backend
            assert isinstance(backend, TapBackend) and backend.name == "xisnap1"
