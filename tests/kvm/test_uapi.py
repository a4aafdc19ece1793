"""Every ctypes structure, ioctl number and constant of uapi.py against <linux/kvm.h>.

A C program generated from the ctypes definitions prints ``sizeof``/``offsetof`` of every
field (nested structures and anonymous unions included) and the value of every macro; the
test compares them all and reports every mismatch at once.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from xinterface.kvm import uapi

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed")

CONSTANT_PREFIXES = ("KVM_EXIT_", "KVM_CAP_", "KVM_MEM_", "KVM_IOEVENTFD_FLAG_",
                     "KVM_IRQFD_FLAG_", "KVM_SYSTEM_EVENT_", "KVM_INTERNAL_ERROR_")
CONSTANTS = ("KVM_API_VERSION", "KVM_NR_INTERRUPTS", "KVM_PIT_SPEAKER_DUMMY",
             "KVM_COALESCED_MMIO_PAGE_OFFSET", "KVM_PIO_PAGE_OFFSET",
             "KVM_CPUID_FLAG_SIGNIFCANT_INDEX")
# ctypes declares these flexible-array structures as their header only.
FLEXIBLE = {"kvm_cpuid2": "entries", "kvm_msrs": "entries",
            "kvm_coalesced_mmio_ring": "coalesced_mmio"}
CType = type[ctypes.Structure] | type[ctypes.Union]


def structures() -> list[type[ctypes.Structure]]:
    return [v for k, v in vars(uapi).items()
            if k.startswith("kvm_") and isinstance(v, type) and issubclass(v, ctypes.Structure)]


def fields(cls: CType, prefix: str = "", base: int = 0) -> Iterator[tuple[str, int, int]]:
    """(C member path, offset, size) for every field, through nested and anonymous members."""
    anonymous = getattr(cls, "_anonymous_", ())
    for entry in cls._fields_:
        name, ctype = entry[0], entry[1]
        offset = base + getattr(cls, name).offset
        nested = issubclass(ctype, ctypes.Structure | ctypes.Union)
        if name in anonymous and nested:
            yield from fields(ctype, prefix, offset)  # type: ignore[arg-type]
            continue
        path = prefix + name
        yield path, offset, ctypes.sizeof(ctype)
        if nested:
            yield from fields(ctype, path + ".", offset)  # type: ignore[arg-type]


def constants() -> dict[str, int]:
    out = {name: v for name, v in vars(uapi).items()
           if isinstance(v, int) and (name.startswith(CONSTANT_PREFIXES) or name in CONSTANTS)}
    out.update({name: value for value, name in uapi.IOCTL_NAMES.items()})
    return out


def c_program() -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <linux/kvm.h>",
             "#define MEMBER_SIZE(t, m) sizeof(((struct t *)0)->m)", "int main(void) {"]
    for cls in structures():
        name = cls.__name__
        lines.append(f'printf("sizeof {name} %zu\\n", sizeof(struct {name}));')
        if name in FLEXIBLE:
            lines.append(f'printf("header {name} %zu\\n", offsetof(struct {name}, '
                         f'{FLEXIBLE[name]}));')
        for path, _, _ in fields(cls):
            lines.append(f'printf("offset {name}.{path} %zu\\n", offsetof(struct {name}, {path}));')
            lines.append(f'printf("size {name}.{path} %zu\\n", MEMBER_SIZE({name}, {path}));')
    for const in constants():
        lines.append(f'printf("const {const} %llu\\n", (unsigned long long)({const}));')
    lines.append('printf("const RING_MAX %zu\\n", (4096 - sizeof(struct kvm_coalesced_mmio_ring))'
                 ' / sizeof(struct kvm_coalesced_mmio));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """What the C compiler says, keyed like the program prints it."""
    tmp: Path = tmp_path_factory.mktemp("uapi")
    (tmp / "layout.c").write_text(c_program())
    built = subprocess.run(["gcc", "-o", str(tmp / "layout"), str(tmp / "layout.c")],
                           capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    out = subprocess.run([str(tmp / "layout")], capture_output=True, text=True, check=True)
    values = {}
    for line in out.stdout.splitlines():
        kind, key, value = line.split()
        values[f"{kind} {key}"] = int(value)
    return values


def test_structure_sizes_and_offsets(kernel: dict[str, int]) -> None:
    wrong = []
    for cls in structures():
        name = cls.__name__
        size_key = f"header {name}" if name in FLEXIBLE else f"sizeof {name}"
        if kernel[size_key] != ctypes.sizeof(cls):
            wrong.append(f"{size_key}: C {kernel[size_key]}, ctypes {ctypes.sizeof(cls)}")
        for path, offset, size in fields(cls):
            for what, ours in (("offset", offset), ("size", size)):
                theirs = kernel[f"{what} {name}.{path}"]
                if theirs != ours:
                    wrong.append(f"{what} {name}.{path}: C {theirs}, ctypes {ours}")
    assert not wrong, "\n".join(wrong)


def test_every_structure_is_checked(kernel: dict[str, int]) -> None:
    names = {cls.__name__ for cls in structures()}
    assert {"kvm_run", "kvm_regs", "kvm_sregs", "kvm_fpu", "kvm_cpuid2", "kvm_msrs",
            "kvm_ioeventfd", "kvm_irqfd", "kvm_coalesced_mmio_ring"} <= names
    run_members = {path for path, _, _ in fields(uapi.kvm_run)}
    assert {"io.port", "mmio.is_write", "fail_entry.cpu", "internal.data",
            "system_event.flags", "immediate_exit"} <= run_members


def test_ioctl_numbers_and_constants(kernel: dict[str, int]) -> None:
    wrong = [f"{name}: C {kernel[f'const {name}']:#x}, ours {value:#x}"
             for name, value in constants().items() if kernel[f"const {name}"] != value]
    assert not wrong, "\n".join(wrong)
    assert kernel["const RING_MAX"] == uapi.COALESCED_RING_MAX
    assert len(uapi.IOCTL_NAMES) >= 27
