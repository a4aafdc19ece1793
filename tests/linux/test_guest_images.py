"""The initramfs and ext2 writers of guests/linux/build.py, checked with other tools' readers
(busybox cpio, e2fsprogs' debugfs): no KVM needed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.linux.conftest import BUILD


def build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("xinterface_guest_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_initramfs_is_a_newc_archive_busybox_reads(tmp_path: Path) -> None:
    build = build_module()
    archive = tmp_path / "initramfs.cpio"
    archive.write_bytes(build.initramfs_cpio(b"\x7fELF-busybox", b"#!/bin/sh\necho hi\n",
                                             b"#!/bin/sh\n"))
    listing = subprocess.run(["busybox", "cpio", "-tv"], stdin=archive.open("rb"),
                             capture_output=True, text=True, check=True).stdout.splitlines()
    entries = {line.split()[-1] if "->" not in line else line.split()[-3]: line
               for line in listing}
    assert entries["init"].startswith("-rwxr-xr-x") and " 18 " in entries["init"]
    assert entries["dev/console"].startswith("crw-------")
    assert entries["bin/sh"].endswith("bin/sh -> busybox")
    assert entries["bin/busybox"].startswith("-rwxr-xr-x")
    assert entries["etc/udhcpc/default.script"].startswith("-rwxr-xr-x")
    out = subprocess.run(["busybox", "cpio", "-i", "--to-stdout", "init"],
                         stdin=archive.open("rb"), capture_output=True, check=True).stdout
    assert out == b"#!/bin/sh\necho hi\n"


def test_ext2_image_holds_the_files(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    subprocess.run([sys.executable, str(BUILD), "ext2", str(image), "--file",
                    "hello.txt=hello from ext2", "--file", "dir/x=y", "--size", "2M"],
                   check=True)
    assert image.stat().st_size == 2 << 20
    cat = subprocess.run(["debugfs", "-R", "cat /hello.txt", str(image)],
                         capture_output=True, text=True, check=True).stdout
    assert cat == "hello from ext2"
    stats = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True,
                           check=True).stdout
    assert "has_journal" not in stats                     # ext2, as the kernel's EXT2_FS reads
