"""The boards' devices' saved state is untrusted input: each value out of range, each BAR
on RAM or on another device, each ring outside RAM is EINVAL naming the field, checked as a
guest's writes are; and what loads well registers and maps what it says. Built from a
machine description on real KVM, nothing run (a board's devices before the guest starts)."""

from __future__ import annotations

import copy
import errno
import io
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_kvm
from xinterface import Machine
from xinterface.boards.platform import Platform
from xinterface.build import attach_devices, build, build_machine
from xinterface.devices.fw_cfg import FwCfg
from xinterface.devices.pci.function import BAR0, COMMAND
from xinterface.runstate import RunState
from xinterface.snapshot import SnapshotError, restore, restore_built, snapshot
from xinterface.spec import Boot, Disk, MachineSpec
from xinterface.virtio.device import VirtioDevice
from xinterface.virtio.mmio import VirtioMmio
from xinterface.virtio.queue import VirtQueue

pytestmark = needs_kvm
BIOS = {"microvm": "/usr/share/seabios/bios-microvm.bin", "pc": "/usr/share/seabios/bios.bin"}
BAR4 = BAR0 + 16


def board(name: str, **options: Any) -> Iterator[tuple[Machine, Platform]]:
    spec = MachineSpec(memory=16 << 20, board=name, boot=Boot(firmware=BIOS[name]), **options)
    with build_machine(spec) as machine:
        built = attach_devices(spec, machine, serial=io.BytesIO())
        assert built.platform is not None
        yield machine, built.platform


@pytest.fixture
def pc() -> Iterator[tuple[Machine, Platform]]:
    yield from board("pc", rng=True)


@pytest.fixture
def microvm() -> Iterator[tuple[Machine, Platform]]:
    yield from board("microvm", rng=True)


def refused(load: Any, state: dict[str, Any], name: str) -> str:
    with pytest.raises(OSError) as info:
        load(state)
    assert info.value.errno == errno.EINVAL, info.value
    assert name in str(info.value) and getattr(info.value, "argument", None) == name, (
        info.value, getattr(info.value, "argument", None))
    return str(info.value)


def test_fw_cfg_refuses_values_out_of_range() -> None:
    fw = FwCfg()
    fw.selector, fw.offset = 0x19, 12
    state = fw.save()
    again = FwCfg()
    again.load(state)
    assert (again.selector, again.offset) == (0x19, 12)
    for name, value in (("selector", 0x10000), ("offset", -1), ("dma_high", 1 << 32),
                        ("selector", "0")):
        refused(FwCfg().load, {**state, name: value}, name)


def _config(state: dict[str, Any], command: int, bars: dict[int, int]) -> dict[str, Any]:
    """``state`` with function 00:03.0's command register and BAR dwords set."""
    state = copy.deepcopy(state)
    entry = state["functions"]["00:03.0"]
    config = bytearray(bytes.fromhex(entry["config"]))
    struct.pack_into("<H", config, COMMAND, command)
    for offset, value in bars.items():
        struct.pack_into("<I", config, offset, value)
    entry["config"] = config.hex()
    return state


def test_pci_bars_load_and_register_where_the_state_says(pc: tuple[Machine, Platform]
                                                         ) -> None:
    machine, platform = pc
    host = platform.pci
    assert host is not None
    saved = host.save()
    # BAR4 (64-bit prefetchable memory) at 0xfebf0000, BAR0 (I/O) at 0xc000, both decoded.
    good = _config(saved, 0x3, {BAR0: 0xC001, BAR4: 0xFEBF000C, BAR4 + 4: 0})
    host.load(good)
    names = [d.name for d in machine.mmio_bus.routes.devices]
    assert "virtio-pci VirtioRng" in names
    assert [d.base for d in machine.pio_bus.routes.devices
            if d.name == "virtio-pci legacy VirtioRng"] == [0xC000]
    assert host.save() == good


def test_pci_refuses_a_bar_on_ram_on_a_device_or_malformed(pc: tuple[Machine, Platform]
                                                           ) -> None:
    machine, platform = pc
    host = platform.pci
    assert host is not None
    saved = host.save()
    words = refused(host.load, _config(saved, 0x2, {BAR4: 0x0010000C}),
                    "functions[00:03.0].bar4")
    assert "guest memory" in words
    words = refused(host.load, _config(saved, 0x1, {BAR0: 0x0C01}), "functions[00:03.0].bar0")
    assert "pci address" in words
    # A size bit set in BAR4 (16 KiB: bits 4-13 read 0), a vendor ID edited.
    refused(host.load, _config(saved, 0x2, {BAR4: 0xFEBF010C}), "functions[00:03.0].config")
    edited = copy.deepcopy(saved)
    edited["functions"]["00:03.0"]["config"] = "0000" + edited["functions"]["00:03.0"][
        "config"][4:]
    refused(host.load, edited, "functions[00:03.0].config")
    refused(host.load, {**saved, "address": 1 << 32}, "address")
    missing = copy.deepcopy(saved)
    del missing["functions"]["00:03.0"]
    refused(host.load, missing, "functions")
    # Each refusal left the registers as they were, and nothing registered.
    assert host.save() == saved
    assert not [d for d in machine.mmio_bus.routes.devices if "virtio-pci" in d.name]


def _queue(state: dict[str, Any], **values: Any) -> dict[str, Any]:
    state = copy.deepcopy(state)
    state["device"]["queues"][0].update(values)
    return state


def test_virtio_state_is_checked_as_the_drivers_writes(microvm: tuple[Machine, Platform]
                                                       ) -> None:
    _, platform = microvm
    transport = platform.virtio[0]
    assert isinstance(transport, VirtioMmio)
    saved = transport.save()
    # A live queue in RAM, as a driver would leave it: loads, and maps its rings.
    live = copy.deepcopy(saved)
    live["device"].update(status=0xF, driver_features=transport.device.device_features)
    live = _queue(live, ready=True, size=64, desc_addr=0x10000, avail_addr=0x10400,
                  used_addr=0x11000, next_avail=7, next_used=7, event_idx=True,
                  signalled_used=6)
    transport.load(live)
    queue: VirtQueue = transport.device.queues[0]
    assert queue.ready and queue.mapped and queue.next_avail == 7
    # The used index of the last notification decision comes back with the queue (EVENT_IDX
    # compares used_event with it), and the whole state saves as it was loaded.
    assert queue.signalled_used == 6 and transport.save() == live
    assert transport.device.running
    for values, name in (({"size": 3}, "size"), ({"size": 512}, "size"),
                         ({"desc_addr": 0xFEB00000}, "desc_addr"),
                         ({"used_addr": 0x11001}, "used_addr"),
                         ({"avail_addr": 16 << 20}, "avail_addr"),
                         ({"next_avail": 0x10000}, "next_avail"),
                         ({"signalled_used": -1}, "signalled_used"),
                         ({"ready": 1}, "ready")):
        refused(transport.load, _queue(live, **values), f"device.queues[0].{name}")
    bad = copy.deepcopy(live)
    bad["device"]["driver_features"] = 1 << 63
    refused(transport.load, bad, "device.driver_features")
    bad = copy.deepcopy(live)
    bad["device"]["queues"] = []
    refused(transport.load, bad, "device.queues")
    refused(transport.load, {**live, "interrupt_status": 4}, "interrupt_status")
    refused(transport.load, {**live, "device_features": 1}, "device_features")
    # A refused load leaves the device reset, nothing mapped.
    assert not queue.ready and not queue.mapped


class Bare(VirtioDevice):
    """A device with no save()/load(), as a vhost-user one (its state is its backend's)."""

    device_id = 4


def test_a_virtio_device_without_save_is_named(tmp_path: Path) -> None:
    with Machine(memory=4 << 20) as machine:
        from xinterface import bind

        VirtioMmio(Bare(), 0xFEB00000).attach(bind(machine))
        with pytest.raises(SnapshotError) as info:
            snapshot(machine, tmp_path / "never")
    assert info.value.errno == errno.EOPNOTSUPP and "Bare" in str(info.value)
    assert not (tmp_path / "never").exists()


def test_snapshot_holds_the_pause(tmp_path: Path) -> None:
    """A resume() from another thread waits while the machine is held (as snapshot()
    holds it), and goes on once it is let go."""
    from .counting import CountPort, start_and_pause

    port = CountPort()
    with Machine(memory=4 << 20) as machine:
        port.attach(machine)
        thread = start_and_pause(machine, port, 10)
        resumed: list[bool] = []
        with machine.hold():
            other = threading.Thread(target=lambda: resumed.append(machine.resume()))
            other.start()
            time.sleep(0.3)
            assert not resumed and machine.state is RunState.PAUSED
            seen = len(port.seen)
        other.join(10)
        assert resumed == [True]
        deadline = time.monotonic() + 10
        while len(port.seen) <= seen and time.monotonic() < deadline:
            time.sleep(0.001)
        machine.stop()
        thread.join(30)
    assert len(port.seen) > seen       # it ran on after the hold
    with Machine(memory=4 << 20) as idle, idle.hold():
        pass
    with pytest.raises(OSError) as info:
        running = Machine(memory=4 << 20)
        try:
            port2 = CountPort()
            port2.attach(running)
            thread = start_and_pause(running, port2, 1)
            assert running.resume()
            with running.hold():
                pass
        finally:
            running.stop()
            thread.join(30)
            running.close()
    assert info.value.errno == errno.EBUSY


def test_restore_built_refuses_a_missing_or_resized_disk_and_a_missing_tap(
        tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    spec = MachineSpec(memory=16 << 20, boot=Boot(firmware=BIOS["microvm"]),
                       disks=(Disk(str(image)),))
    with build_machine(spec) as machine:
        build(spec, machine, serial=io.BytesIO())
        snapshot(machine, tmp_path / "s")        # idle: before the firmware ran
    image.unlink()
    with pytest.raises(SnapshotError) as info:
        restore_built(tmp_path / "s")
    assert info.value.errno == errno.ENOENT and "disks[0]" in str(info.value)
    assert "\n" not in str(info.value)
    image.write_bytes(bytes(2 << 20))
    with pytest.raises(SnapshotError) as info:
        restore_built(tmp_path / "s")
    assert info.value.errno == errno.EINVAL and "capacity" in str(info.value)
    image.write_bytes(bytes(1 << 20))
    clone, _ = restore_built(tmp_path / "s")
    clone.close()
    with pytest.raises(OSError) as refusal:
        restore_built(tmp_path / "s", taps=["xi-none0"])     # it has no network interface
    assert refusal.value.errno == errno.EINVAL and "taps" in str(refusal.value)


def test_virtio_device_types_keep_their_own_state(tmp_path: Path) -> None:
    """What each device type adds: the console's typed input, the net's frame waiting for
    buffers (and its MAC), the disk's size and read-only-ness."""
    from xinterface.virtio.blk import VirtioBlk
    from xinterface.virtio.console import VirtioConsole
    from xinterface.virtio.net import SocketBackend, VirtioNet

    console = VirtioConsole(io.BytesIO())
    console.feed(b"typed before the snapshot")    # no receive buffers yet: it waits
    again = VirtioConsole(io.BytesIO())
    again.load(console.save())
    assert again.save() == console.save()
    assert again.save()["input"] == b"typed before the snapshot".hex()
    refused(again.load, {**console.save(), "input": "zz"}, "input")

    backend, peer = SocketBackend.pair()
    device = VirtioNet(backend, mac="52:54:00:12:34:56")
    try:
        state = {**device.save(), "held": bytes(range(60)).hex()}
        device.load(state)
        assert device.save()["held"] == bytes(range(60)).hex()
        refused(device.load, {**state, "held": bytes(70000).hex()}, "held")   # > 64 KiB
        refused(device.load, {**state, "mac": "52:54:00:12:34:57"}, "mac")
    finally:
        device.close()
        peer.close()

    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    with VirtioBlk(str(image)) as disk, VirtioBlk(str(image), readonly=True) as ro:
        state = disk.save()
        disk.load(state)
        refused(disk.load, {**state, "capacity": 4096}, "capacity")
        refused(ro.load, state, "readonly")


@pytest.mark.parametrize("name", ["microvm", "pc"])
def test_a_vhost_user_device_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    """A disk served by another process (xinterface serve blk, a real vhost-user backend):
    its state is the backend's, so a snapshot refuses, naming it, and writes nothing."""
    import os
    import subprocess

    from tests.vhost_user.test_frontend import SRC, serve_command, wait_listening
    from xinterface.spec import VhostUser

    image, sock = tmp_path / "disk.img", tmp_path / "blk.sock"
    image.write_bytes(bytes(1 << 20))
    server = subprocess.Popen(serve_command(image, sock), env={**os.environ, "PYTHONPATH": SRC})
    try:
        wait_listening(server, sock)
        spec = MachineSpec(memory=16 << 20, board=name, boot=Boot(firmware=BIOS[name]),
                           vhost_user=(VhostUser("blk", str(sock)),))
        with build_machine(spec) as machine:
            build(spec, machine, serial=io.BytesIO())
            with pytest.raises(SnapshotError) as info:
                snapshot(machine, tmp_path / "never")
        # Nor can a restored machine have one: its memory is private to it.
        with Machine(memory=4 << 20) as bare:
            snapshot(bare, tmp_path / "bare")

        def attach(machine: Machine) -> None:
            from xinterface import bind
            from xinterface.vhost_user.device import VhostUserBlk

            intf, device = bind(machine), VhostUserBlk(str(sock))
            intf.on_release(device.close)
            VirtioMmio(device, 0xFEB00000).attach(intf)

        with pytest.raises(SnapshotError) as again:
            restore(tmp_path / "bare", attach=attach)
        assert again.value.errno == errno.EOPNOTSUPP
        assert "cannot restore" in str(again.value) and "VhostUserBlk" in str(again.value)
    finally:
        server.terminate()
        server.wait(10)
    assert info.value.errno == errno.EOPNOTSUPP and "VhostUserBlk" in str(info.value)
    assert "\n" not in str(info.value) and not (tmp_path / "never").exists()
