"""The machine description (``xinterface.spec``): plain data that goes to JSON and back
unchanged, and one set of rules, each failure EINVAL naming the field."""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest

from xinterface.errors import XInterfaceError
from xinterface.spec import (
    IPXE_VIRTIO_ROM,
    MIN_FIRMWARE_RAM,
    Boot,
    Consoles,
    Disk,
    MachineSpec,
    Net,
)

FIRMWARE = Boot(firmware="/usr/share/seabios/bios.bin")
KERNEL = Boot(kernel="vmlinux", initrd="initramfs", cmdline="console=ttyS0 quiet")

SPECS = [
    MachineSpec(boot=FIRMWARE),
    MachineSpec(board=None, irqchip=False, strict=True, consoles=Consoles(uart=False)),
    MachineSpec(memory=1 << 30, vcpus=4, cpu="baseline", board="pc", boot=FIRMWARE,
                disks=(Disk("a.img"), Disk("b.img", readonly=True)),
                nets=(Net("tap0"), Net("tap1", "52:54:00:00:00:02", IPXE_VIRTIO_ROM)),
                rng=True, doorbells="eventfd",
                consoles=Consoles(posted_debugcon=True, virtio_console=True, sercon=True)),
    MachineSpec(cpu="host", boot=KERNEL, disks=(Disk("root.img", True),)),
]


@pytest.mark.parametrize("spec", SPECS)
def test_json_round_trip(spec: MachineSpec) -> None:
    text = json.dumps(spec.to_json())
    back = MachineSpec.from_json(json.loads(text))
    assert back == spec.validate()
    assert isinstance(back.disks, tuple) and all(isinstance(d, Disk) for d in back.disks)
    assert all(isinstance(n, Net) for n in back.nets)
    assert isinstance(back.boot, Boot) and isinstance(back.consoles, Consoles)
    assert json.dumps(back.to_json()) == text


def test_json_is_plain_data() -> None:
    data = SPECS[2].to_json()
    assert data["disks"] == [{"path": "a.img", "readonly": False},
                             {"path": "b.img", "readonly": True}]
    assert data["boot"]["firmware"] == "/usr/share/seabios/bios.bin"
    assert data["consoles"]["sercon"] is True and data["memory"] == 1 << 30


def test_missing_fields_take_their_defaults() -> None:
    assert MachineSpec.from_json({"boot": {"firmware": "bios.bin"}}) == MachineSpec(
        boot=Boot(firmware="bios.bin"))
    assert MachineSpec.from_json({"board": None}) == MachineSpec(board=None)


def _fails(spec: MachineSpec, field: str) -> XInterfaceError:
    with pytest.raises(XInterfaceError) as info:
        spec.validate()
    assert info.value.errno == errno.EINVAL
    assert info.value.argument == field, str(info.value)
    return info.value


GOOD = MachineSpec(boot=FIRMWARE)


@pytest.mark.parametrize(("spec", "field"), [
    (GOOD._replace(board="q35"), "board"),
    (GOOD._replace(boot=Boot()), "boot"),
    (GOOD._replace(boot=Boot(firmware="bios.bin", kernel="vmlinux")), "boot"),
    (MachineSpec(board=None, boot=Boot(kernel="vmlinux")), "boot.kernel"),
    (GOOD._replace(boot=Boot(firmware="bios.bin", initrd="initramfs")), "boot.initrd"),
    (GOOD._replace(boot=Boot(firmware="bios.bin", cmdline="quiet")), "boot.cmdline"),
    (GOOD._replace(memory=0), "memory"),
    (GOOD._replace(memory=MIN_FIRMWARE_RAM - 4096), "memory"),
    (GOOD._replace(vcpus=0), "vcpus"),
    (GOOD._replace(cpu="pentium"), "cpu"),
    (GOOD._replace(doorbells="interrupt"), "doorbells"),
    (GOOD._replace(disks=(Disk("a.img"), Disk(""))), "disks[1].path"),
    (GOOD._replace(nets=(Net(""),)), "nets[0].tap"),
    (GOOD._replace(nets=(Net("tap0"), Net("tap1", mac="52:54:00"))), "nets[1].mac"),
    (GOOD._replace(nets=(Net("tap0", mac="01:00:00:00:00:00"),)), "nets[0].mac"),
    (GOOD._replace(nets=(Net("tap0", rom=""),)), "nets[0].rom"),
    (MachineSpec(board=None, disks=(Disk("a.img"),)), "disks"),
    (MachineSpec(board=None, nets=(Net("tap0"),)), "nets"),
    (MachineSpec(board=None, rng=True), "rng"),
    (MachineSpec(board=None, consoles=Consoles(virtio_console=True)), "consoles.virtio_console"),
    (MachineSpec(board=None, consoles=Consoles(sercon=True)), "consoles.sercon"),
    (MachineSpec(board=None, boot=FIRMWARE), "boot.firmware"),
    (GOOD._replace(consoles=Consoles(uart=False)), "consoles.uart"),
    # Types: what JSON, or a caller, may hand in.
    (GOOD._replace(memory="64M"), "memory"),  # type: ignore[arg-type]
    (GOOD._replace(memory=True), "memory"),
    (GOOD._replace(vcpus=1.0), "vcpus"),  # type: ignore[arg-type]
    (GOOD._replace(strict=1), "strict"),  # type: ignore[arg-type]
    (GOOD._replace(boot=("bios.bin",)), "boot"),  # type: ignore[arg-type]
    (GOOD._replace(consoles=Consoles(uart="yes")), "consoles.uart"),  # type: ignore[arg-type]
    (GOOD._replace(disks=[Disk("a.img")]), "disks"),  # type: ignore[arg-type]
    (GOOD._replace(disks=(("a.img", False),)), "disks[0]"),  # type: ignore[arg-type]
    (GOOD._replace(nets=(Net("tap0", mac=0x525400123456),)), "nets[0].mac"),  # type: ignore[arg-type]
])
def test_every_rule_names_its_field(spec: MachineSpec, field: str) -> None:
    _fails(spec, field)


def test_the_firmware_memory_rule_says_what_is_needed() -> None:
    exc = _fails(GOOD._replace(memory=512 << 10), "memory")
    assert str(exc) == ("512 KiB is too little for the firmware: SeaBIOS needs 640K or more "
                        "(EINVAL)")
    assert exc.value == 512 << 10


@pytest.mark.parametrize(("data", "field"), [
    ([], "spec"),
    ({"memroy": 1}, "memroy"),
    ({"boot": {"firmware": "bios.bin", "bios": "x"}}, "boot.bios"),
    ({"boot": "bios.bin"}, "boot"),
    ({"consoles": {"uart": 1}}, "consoles.uart"),
    ({"boot": {"firmware": "b"}, "disks": {"path": "a.img"}}, "disks"),
    ({"boot": {"firmware": "b"}, "disks": [{"path": "a.img", "ro": True}]}, "disks[0].ro"),
    ({"boot": {"firmware": "b"}, "nets": ["tap0"]}, "nets[0]"),
    ({"boot": {"firmware": "b"}, "nets": [{"tap": "tap0", "mac": "zz"}]}, "nets[0].mac"),
    ({"boot": {"firmware": "b"}, "vcpus": "2"}, "vcpus"),
    ({"boot": {"firmware": "b"}, "disks": [{"readonly": True}]}, "disks[0].path"),
    ({"boot": {"firmware": "b"}, "nets": [{"mac": "52:54:00:12:34:56"}]}, "nets[0].tap"),
])
def test_from_json_refuses_what_to_json_never_gives(data: Any, field: str) -> None:
    with pytest.raises(XInterfaceError) as info:
        MachineSpec.from_json(data)
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, field)


def test_validate_returns_the_description() -> None:
    assert all(spec.validate() is spec for spec in SPECS)
