#!/usr/bin/env python3
"""Build the xinterface test kernel and initramfs from Debian packages, cached by their inputs.

    python3 guests/linux/build.py [--jobs N] [--json]
    python3 guests/linux/build.py ext2 OUT.img --file NAME=TEXT [--file ...] [--size 4M]

The kernel: Debian's ``linux-source-6.1`` (/usr/src/linux-source-6.1.tar.xz), ``make
tinyconfig`` plus ``config.fragment``, the patches in ``patches/`` (each needed only because
of kvm_pvm's instruction emulator; see docs/linux.md), ``make bzImage``. The initramfs: Debian's
``busybox-static`` as /bin/busybox, ``init.sh`` as /init and ``udhcpc.sh`` as udhcpc's event
hook, written as a newc cpio by this script (no root needed for /dev/console), gzip-compressed.

Outputs, under ``${XDG_CACHE_HOME:-~/.cache}/xinterface/linux/``:
  kernel-<hash>/     vmlinux (ELF, PVH entry), bzImage, config, System.map, features.json
  initramfs-<hash>/  initramfs.cpio, initramfs.cpio.gz
where each hash covers that output's inputs (source package, fragment, patches, compiler;
busybox, init and udhcpc scripts). A second call with the same inputs builds nothing.
``--json`` prints the paths. Concurrent calls wait for each other (a lock file).

``ext2`` writes a small ext2 image holding the given files (``mke2fs -d`` from e2fsprogs, no
mount, no root).
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE_GLOB = "linux-source-6.1.tar.xz"
SOURCE_DIR = Path("/usr/src")
BUSYBOX = Path("/bin/busybox")
FRAGMENT = HERE / "config.fragment"
PATCHES = HERE / "patches"
INIT = HERE / "init.sh"
UDHCPC_SCRIPT = HERE / "udhcpc.sh"
# Bump when the recipe below changes what it produces from the same inputs.
KERNEL_RECIPE = 1
INITRAMFS_RECIPE = 2
# Reproducible build metadata (Documentation/kbuild/reproducible-builds.rst).
BUILD_ENV = {
    "KBUILD_BUILD_TIMESTAMP": "2024-01-01",
    "KBUILD_BUILD_USER": "xinterface",
    "KBUILD_BUILD_HOST": "xinterface",
    "LC_ALL": "C",
}
# Feature flags the kvm_pvm workaround clears with clearcpuid= (their numbers depend on the
# kernel version: arch/x86/include/asm/cpufeatures.h of the source built).
FEATURES_OF_INTEREST = ("XSAVE", "POPCNT", "SMAP", "SMEP", "FSGSBASE", "CX16", "AVX",
                        "XSAVEOPT", "XSAVEC", "XSAVES", "RDRAND", "RDSEED", "MOVBE")
_FEATURE_RE = re.compile(r"^#define\s+X86_FEATURE_(\w+)\s+\(\s*(\d+)\s*\*\s*32\s*\+\s*(\d+)\s*\)",
                         re.MULTILINE)


class BuildError(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xinterface" / "linux"


def source_tarball() -> Path:
    path = SOURCE_DIR / SOURCE_GLOB
    if not path.exists():
        raise BuildError(f"{path} is missing: apt-get install linux-source-6.1")
    return path


def _tool_version(*argv: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} is not installed (see scripts/debian-packages.txt)") from None
    return done.stdout.splitlines()[0] if done.stdout else ""


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def kernel_inputs_hash() -> str:
    tarball = source_tarball()
    stat = tarball.stat()
    parts = [
        f"recipe {KERNEL_RECIPE}".encode(),
        f"{tarball.name} {stat.st_size} {stat.st_mtime_ns}".encode(),
        FRAGMENT.read_bytes(),
        _tool_version("gcc", "--version").encode(),
        _tool_version("ld", "--version").encode(),
    ]
    for patch in sorted(PATCHES.glob("*.patch")):
        parts += [patch.name.encode(), patch.read_bytes()]
    return _digest(parts)


def initramfs_inputs_hash() -> str:
    if not BUSYBOX.exists():
        raise BuildError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    return _digest([f"recipe {INITRAMFS_RECIPE}".encode(), BUSYBOX.read_bytes(),
                    INIT.read_bytes(), UDHCPC_SCRIPT.read_bytes()])


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(argv: list[str], cwd: Path, log: Path) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        done = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **BUILD_ENV}, check=False)
    if done.returncode:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise BuildError(f"{' '.join(argv)} failed (status {done.returncode}); log {log}:\n"
                         + "\n".join(tail))


def _wanted_options() -> dict[str, str]:
    wanted = {}
    for line in FRAGMENT.read_text().splitlines():
        line = line.strip()
        if line.startswith("CONFIG_"):
            name, _, value = line.partition("=")
            wanted[name] = value
    return wanted


def _check_config(config: Path) -> None:
    """Every option of the fragment must have survived olddefconfig (a missing dependency
    would silently drop it)."""
    have = {}
    for line in config.read_text().splitlines():
        if line.startswith("CONFIG_"):
            name, _, value = line.partition("=")
            have[name] = value
    wrong = [f"{name}={value} (got {have.get(name, 'n')})"
             for name, value in _wanted_options().items()
             if have.get(name, "n") != value]
    if wrong:
        raise BuildError("config options of config.fragment not in the final .config "
                         "(a dependency is missing):\n  " + "\n  ".join(wrong))


def cpu_features(header: Path) -> dict[str, int]:
    """X86_FEATURE_* numbers (word * 32 + bit) as clearcpuid= takes them."""
    found = {m[1]: int(m[2]) * 32 + int(m[3]) for m in _FEATURE_RE.finditer(header.read_text())}
    return {name: found[name] for name in FEATURES_OF_INTEREST if name in found}


def build_kernel(out: Path, jobs: int) -> None:
    work = out.parent / f".build-{out.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    src = work / "src"
    src.mkdir()
    started = time.monotonic()
    print(f"building the test kernel in {work} (log: {log}) ...", file=sys.stderr)
    steps: list[tuple[str, list[str]]] = [
        ("unpacking the source", ["tar", "-xf", str(source_tarball()), "--strip-components=1"]),
        *((f"patch {patch.name}", ["patch", "-p1", "--forward", "--batch", "-i", str(patch)])
          for patch in sorted(PATCHES.glob("*.patch"))),
        ("make tinyconfig", ["make", "tinyconfig"]),
        ("merging the fragment", ["scripts/kconfig/merge_config.sh", "-m", ".config",
                                  str(FRAGMENT)]),
        ("make olddefconfig", ["make", "olddefconfig"]),
        ("make bzImage (minutes)", ["make", f"-j{jobs}", "bzImage"]),
    ]
    # Minutes of work: a live step and clock on a terminal (rich prints nothing elsewhere).
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("test kernel: {task.description}"), BarColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=len(steps))
        for what, argv in steps:
            bar.update(task, description=what)
            if argv[0] == "make" and argv[-1] == "bzImage":
                _check_config(src / ".config")
            _run(argv, src, log)
            bar.advance(task)
    staging = out.parent / f".staging-{out.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copy2(src / "vmlinux", staging / "vmlinux")
    shutil.copy2(src / "arch/x86/boot/bzImage", staging / "bzImage")
    shutil.copy2(src / ".config", staging / "config")
    shutil.copy2(src / "System.map", staging / "System.map")
    version = (src / "include/config/kernel.release").read_text().strip()
    features = cpu_features(src / "arch/x86/include/asm/cpufeatures.h")
    (staging / "features.json").write_text(json.dumps(
        {"kernel_release": version, "x86_features": features}, indent=1, sort_keys=True) + "\n")
    shutil.copy2(log, staging / "build.log")
    staging.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"test kernel {version} built in {time.monotonic() - started:.0f} s: {out}",
          file=sys.stderr)


# --- initramfs: a newc cpio (Linux Documentation/driver-api/early-userspace/buffer-format.rst)

_NEWC_MAGIC = b"070701"
S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
                ino: int = 0) -> bytes:
    raw_name = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1 if not mode & S_IFDIR else 2, 0, len(data), 0, 0,
              rdev[0], rdev[1], len(raw_name), 0]
    head = _NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
    entry = head + raw_name
    entry += b"\0" * (-len(entry) % 4)
    entry += data + b"\0" * (-len(data) % 4)
    return entry


def initramfs_cpio(busybox: bytes, init: bytes, udhcpc_script: bytes) -> bytes:
    applets = ("sh", "mount", "cat", "echo", "reboot", "poweroff", "ls", "uname", "dmesg")
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        ("bin", S_IFDIR | 0o755, b"", (0, 0)),
        ("dev", S_IFDIR | 0o755, b"", (0, 0)),
        ("dev/console", S_IFCHR | 0o600, b"", (5, 1)),   # the kernel opens it for /init
        ("proc", S_IFDIR | 0o755, b"", (0, 0)),
        ("sys", S_IFDIR | 0o755, b"", (0, 0)),
        ("mnt", S_IFDIR | 0o755, b"", (0, 0)),
        ("bin/busybox", S_IFREG | 0o755, busybox, (0, 0)),
        ("init", S_IFREG | 0o755, init, (0, 0)),
        # where busybox udhcpc looks for its event hook without -s
        ("etc", S_IFDIR | 0o755, b"", (0, 0)),
        ("etc/udhcpc", S_IFDIR | 0o755, b"", (0, 0)),
        ("etc/udhcpc/default.script", S_IFREG | 0o755, udhcpc_script, (0, 0)),
    ]
    entries += [(f"bin/{a}", S_IFLNK | 0o777, b"busybox", (0, 0)) for a in applets]
    body = b"".join(_cpio_entry(name, mode, data, rdev, ino)
                    for ino, (name, mode, data, rdev) in enumerate(entries, start=1))
    return body + _cpio_entry("TRAILER!!!", 0)


def build_initramfs(out: Path) -> None:
    staging = out.parent / f".staging-{out.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cpio = initramfs_cpio(BUSYBOX.read_bytes(), INIT.read_bytes(), UDHCPC_SCRIPT.read_bytes())
    # Uncompressed is the one to boot here: inflating costs the emulated kernel seconds more
    # than copying. The gzip one (mtime 0: same inputs, same bytes) is for other VMMs.
    (staging / "initramfs.cpio").write_bytes(cpio)
    (staging / "initramfs.cpio.gz").write_bytes(gzip.compress(cpio, compresslevel=9, mtime=0))
    staging.rename(out)


def ensure_built(jobs: int) -> dict[str, str]:
    """Build whatever is missing; the paths of the outputs."""
    root = cache_root()
    kernel = root / f"kernel-{kernel_inputs_hash()}"
    initramfs = root / f"initramfs-{initramfs_inputs_hash()}"
    with _locked(root):
        if not kernel.exists():
            build_kernel(kernel, jobs)
        if not initramfs.exists():
            build_initramfs(initramfs)
    features = json.loads((kernel / "features.json").read_text())
    return {
        "vmlinux": str(kernel / "vmlinux"),
        "bzImage": str(kernel / "bzImage"),
        "config": str(kernel / "config"),
        "features": str(kernel / "features.json"),
        "kernel_release": features["kernel_release"],
        "initramfs": str(initramfs / "initramfs.cpio"),
        "initramfs_gz": str(initramfs / "initramfs.cpio.gz"),
    }


# --- ext2 images --------------------------------------------------------------------------------

def make_ext2(out: Path, files: dict[str, bytes], size: str = "4M") -> None:
    with tempfile.TemporaryDirectory(prefix="xinterface-ext2-") as tmp:
        root = Path(tmp)
        for name, data in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        out.unlink(missing_ok=True)
        done = subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "1024", "-d", str(root),
                               "-E", "root_owner=0:0", str(out), size],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            raise BuildError(f"mke2fs failed: {done.stderr.strip()}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["ext2"]:
        parser = argparse.ArgumentParser(prog="build.py ext2")
        parser.add_argument("out", type=Path)
        parser.add_argument("--file", action="append", default=[], metavar="NAME=TEXT")
        parser.add_argument("--size", default="4M")
        args = parser.parse_args(argv[1:])
        files = {}
        for item in args.file:
            name, sep, text = item.partition("=")
            if not sep:
                parser.error(f"--file {item!r}: expected NAME=TEXT")
            files[name] = text.encode()
        make_ext2(args.out, files, args.size)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true", help="print the output paths as JSON")
    args = parser.parse_args(argv)
    try:
        paths = ensure_built(args.jobs)
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(paths, indent=1))
    else:
        for key, value in paths.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
