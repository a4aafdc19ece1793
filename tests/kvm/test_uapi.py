"""Every ctypes structure, ioctl number and constant of uapi.py against <linux/kvm.h>.

A C program generated from the ctypes definitions prints ``sizeof``/``offsetof`` of every
member (through nested structures and anonymous unions) and the value of every macro uapi.py
mirrors; each test compares one category and lists all of its mismatches at once.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from xinterface.kvm import uapi

CType = type[ctypes.Structure] | type[ctypes.Union]
Kernel = dict[str, int | None]  # None: the macro is not defined by the headers

# ctypes declares these without their flexible array: C member name and element type.
FLEXIBLE: dict[str, tuple[str, type[ctypes._CData]]] = {
    "kvm_msr_list": ("indices", ctypes.c_uint32),
    "kvm_cpuid2": ("entries", uapi.kvm_cpuid_entry2),
    "kvm_msrs": ("entries", uapi.kvm_msr_entry),
    "kvm_coalesced_mmio_ring": ("coalesced_mmio", uapi.kvm_coalesced_mmio),
    "kvm_irq_routing": ("entries", uapi.kvm_irq_routing_entry),
}
# A <linux/kvm.h> macro that uapi.py mirrors without the KVM prefix.
EXTRA_MACROS = ("SYNC_REGS_SIZE_BYTES",)
RING_MAX_C = "(4096 - sizeof(struct kvm_coalesced_mmio_ring)) / sizeof(struct kvm_coalesced_mmio)"


def structures() -> list[CType]:
    return [
        value for name, value in vars(uapi).items()
        if name.startswith("kvm_") and isinstance(value, type)
        and issubclass(value, (ctypes.Structure, ctypes.Union))
        and value.__module__ == uapi.__name__
    ]


def members(cls: CType, prefix: str = "", base: int = 0) -> Iterator[tuple[str, int, int]]:
    """(C member designator, offset, size) of every named member, nested ones included."""
    anonymous = getattr(cls, "_anonymous_", ())
    for name, ctype, *_ in cls._fields_:
        offset = base + int(getattr(cls, name).offset)
        if not issubclass(ctype, (ctypes.Structure, ctypes.Union)):
            yield prefix + name, offset, ctypes.sizeof(ctype)
        elif name in anonymous:
            # A ctypes anonymous member is a C anonymous union: it has no name of its own in C,
            # its members are reached straight from the parent (run.io.port).
            yield from members(ctype, prefix, offset)
        else:
            yield prefix + name, offset, ctypes.sizeof(ctype)
            yield from members(ctype, f"{prefix}{name}.", offset)


def layout(cls: CType) -> dict[str, int]:
    """Expected values keyed ``sizeof:struct[.member]`` / ``offsetof:struct.member``."""
    struct = cls.__name__
    want: dict[str, int] = {}
    if struct in FLEXIBLE:
        flex, element = FLEXIBLE[struct]
        want[f"offsetof:{struct}.{flex}"] = ctypes.sizeof(cls)
        want[f"sizeof:{struct}.{flex}[0]"] = ctypes.sizeof(element)
    else:
        want[f"sizeof:{struct}"] = ctypes.sizeof(cls)
    for path, offset, size in members(cls):
        want[f"offsetof:{struct}.{path}"] = offset
        want[f"sizeof:{struct}.{path}"] = size
    return want


def macros() -> dict[str, int]:
    """Every integer uapi.py mirrors from the headers.

    All KVM* names, not only the documented prefixes, so a new constant cannot go unchecked.
    """
    return {
        name: value for name, value in vars(uapi).items()
        if (name.startswith("KVM") or name in EXTRA_MACROS) and isinstance(value, int)
    }


def c_expr(key: str) -> str:
    what, _, designator = key.partition(":")
    struct, _, member = designator.partition(".")
    if what == "offsetof":
        return f"offsetof(struct {struct}, {member})"
    return f"MEMBER_SIZE({struct}, {member})" if member else f"sizeof(struct {struct})"


def c_program() -> str:
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <linux/kvm.h>",
        "#define MEMBER_SIZE(s, m) sizeof(((struct s *)0)->m)",
        # Ioctl numbers need the unsigned range; the signed branch keeps a negative macro honest.
        '#define SHOW(key, v) ((v) < 0 ? printf("%s %lld\\n", key, (long long)(v))'
        ' : printf("%s %llu\\n", key, (unsigned long long)(v)))',
        "int main(void) {",
    ]
    lines += [f'SHOW("{key}", {c_expr(key)});' for cls in structures() for key in layout(cls)]
    for name in macros():
        # Guarded so that a name the headers lack is reported as such, not as a compile error.
        lines += [f"#ifdef {name}", f'SHOW("macro:{name}", {name});', "#else",
                  f'puts("macro:{name} MISSING");', "#endif"]
    lines += [f'SHOW("ring_max", {RING_MAX_C});', "return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Kernel:
    """The values the C compiler gives, keyed as :func:`layout` and ``macro:NAME``."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the uapi check compiles C against <linux/kvm.h>")
    tmp = tmp_path_factory.mktemp("uapi")
    source, binary = tmp / "layout.c", tmp / "layout"
    source.write_text(c_program())
    built = subprocess.run([gcc, "-o", str(binary), str(source)],
                           capture_output=True, text=True, check=False)
    if built.returncode != 0:
        # gcc's macro-expansion notes bury the one useful line; keep each distinct error once.
        errors = dict.fromkeys(line.split(" error: ", 1)[1]
                               for line in built.stderr.splitlines() if " error: " in line)
        pytest.fail(f"{source} does not compile; uapi.py declares what <linux/kvm.h> lacks:\n"
                    + "\n".join(errors or [built.stderr]), pytrace=False)
    ran = subprocess.run([str(binary)], capture_output=True, text=True, check=True)
    values: Kernel = {}
    for line in ran.stdout.splitlines():
        key, value = line.split()
        values[key] = None if value == "MISSING" else int(value)
    return values


def mismatches(want: dict[str, int], kernel: Kernel, fmt: str = "d") -> list[str]:
    wrong = []
    for key, ours in want.items():
        theirs = kernel[key]
        if theirs is None:
            wrong.append(f"{key}: not defined by <linux/kvm.h> (uapi.py: {ours:{fmt}})")
        elif theirs != ours:
            wrong.append(f"{key}: C {theirs:{fmt}}, uapi.py {ours:{fmt}}")
    return wrong


@pytest.mark.parametrize("cls", structures(), ids=lambda cls: cls.__name__)
def test_structure_layout(cls: CType, kernel: Kernel) -> None:
    wrong = mismatches(layout(cls), kernel)
    assert not wrong, f"struct {cls.__name__} differs from C:\n" + "\n".join(wrong)


def test_ioctl_numbers(kernel: Kernel) -> None:
    named = set(uapi.IOCTL_NAMES.values())
    wrong = mismatches({f"macro:{name}": value for value, name in uapi.IOCTL_NAMES.items()},
                       kernel, "#x")
    # IOCTL_NAMES filters on the value, so a number with a wrong type byte, or two constants
    # sharing one number, would drop out of it unseen; classify by the C value instead.
    for name in sorted(macros()):
        theirs = kernel[f"macro:{name}"]
        if theirs is not None and (theirs >> 8) & 0xFF == uapi.KVMIO and name not in named:
            wrong.append(f"{name}: an ioctl in C ({theirs:#x}) but not in uapi.IOCTL_NAMES")
    assert not wrong, "ioctl numbers differ from C:\n" + "\n".join(wrong)


def test_constants(kernel: Kernel) -> None:
    ioctls = set(uapi.IOCTL_NAMES.values())
    want = {f"macro:{name}": value for name, value in macros().items() if name not in ioctls}
    want["ring_max"] = uapi.COALESCED_RING_MAX
    wrong = mismatches(want, kernel)
    assert not wrong, "constants differ from C:\n" + "\n".join(wrong)


def test_walk_reaches_everything() -> None:
    """Guards the generator itself: an empty walk would make the tests above pass vacuously."""
    assert {cls.__name__ for cls in structures()} >= {
        "kvm_run", "kvm_regs", "kvm_sregs", "kvm_segment", "kvm_dtable", "kvm_fpu",
        "kvm_cpuid_entry2", "kvm_cpuid2", "kvm_msr_entry", "kvm_msrs", "kvm_pit_config",
        "kvm_irq_level", "kvm_ioeventfd", "kvm_irqfd", "kvm_coalesced_mmio_zone",
        "kvm_coalesced_mmio", "kvm_coalesced_mmio_ring", "kvm_userspace_memory_region",
    }
    assert {path for path, _, _ in members(uapi.kvm_run)} >= {
        "io.port", "io.data_offset", "mmio.is_write", "fail_entry.cpu", "internal.data",
        "system_event.flags", "hw.hardware_exit_reason", "ex.error_code", "s",
    }
    assert "cs.base" in {path for path, _, _ in members(uapi.kvm_sregs)}
    assert {path for path, _, _ in members(uapi.kvm_irq_level)} == {"irq", "status", "level"}
    names = macros()
    for prefix in ("KVM_EXIT_", "KVM_CAP_", "KVM_MEM_", "KVM_IOEVENTFD_FLAG_",
                   "KVM_IRQFD_FLAG_", "KVM_SYSTEM_EVENT_", "KVM_INTERNAL_ERROR_"):
        assert any(name.startswith(prefix) for name in names), prefix
    assert "KVM_COALESCED_MMIO_PAGE_OFFSET" in names
    assert set(uapi.IOCTL_NAMES.values()) <= set(names)
