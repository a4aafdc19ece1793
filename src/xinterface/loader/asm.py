"""Assemble a guest from GNU as source into a flat binary linked at its gpa, with a cache.

Guests in this project are sources, never checked-in machine code: ``as`` then ``ld -N
-Ttext=GPA`` then ``objcopy -O binary``. Results are cached by the hash of the source and the
options, so a test suite assembles each guest once.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path

_TOOLS = ("as", "ld", "objcopy")


class AssemblerError(RuntimeError):
    """binutils is missing, or the source does not assemble; the message holds its stderr."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "xinterface" / "asm"


def _temp_cache_dir() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"xinterface-{os.getuid()}" / "asm"


def _private(path: Path) -> bool:
    """A directory of ours that nobody else can write (so nobody can plant a guest in it)."""
    st = path.lstat()
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def usable_cache() -> Path | None:
    """Where assembled guests are cached: the user's cache directory, else (an unwritable home,
    say) a private one under the temporary directory, else nowhere: the cache only saves time."""
    home = cache_dir()
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK | os.X_OK):
            return home
    except OSError:
        pass
    temp = _temp_cache_dir()
    try:
        temp.parent.mkdir(mode=0o700, exist_ok=True)
        temp.mkdir(mode=0o700, exist_ok=True)
        if _private(temp.parent) and _private(temp):
            return temp
    except OSError:
        pass
    return None


_INCLUDE = re.compile(rb'^\s*\.include\s+"([^"]+)"', re.MULTILINE)


def _included(path: Path, seen: frozenset[Path] = frozenset()) -> bytes:
    """The text of every file ``path`` includes from its own directory, depth first (what
    else the binary depends on, for the cache key); a missing one is ``as``'s to report."""
    out = b""
    for name in _INCLUDE.findall(path.read_bytes()):
        child = path.parent / name.decode(errors="replace")
        if child in seen or not child.is_file():
            continue
        out += child.read_bytes() + _included(child, seen | {child})
    return out


def assemble(source: str | os.PathLike[str], *, gpa: int, bits: int = 32,
             defines: dict[str, int] | None = None) -> bytes:
    """The flat binary of ``source`` (a path to a GNU as file) linked so its text starts at gpa.

    ``bits`` picks the object format: 32 (``--32``, for 16- and 32-bit code) or 64.
    ``defines`` become ``--defsym NAME=VALUE`` symbols the source can use. ``.include
    "name"`` finds files next to the source (``as -I``); the cache key covers them.
    """
    # Imported here: running a prebuilt image never assembles, and these cost start-up time.
    import hashlib
    import shutil
    import subprocess
    import tempfile

    path = Path(source)
    text = path.read_bytes() + _included(path)
    args_32 = bits != 64
    syms = sorted((defines or {}).items())
    key = hashlib.sha256(
        text + repr((gpa, args_32, syms, path.name)).encode()
    ).hexdigest()[:24]
    cache = usable_cache()
    cached = cache / f"{path.stem}-{key}.bin" if cache is not None else None
    if cached is not None and cached.exists():
        return cached.read_bytes()
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        raise AssemblerError(f"{', '.join(missing)} not found: install binutils "
                             "(apt-get install binutils)")
    with tempfile.TemporaryDirectory(prefix="xinterface-asm-") as tmp:
        obj, elf, binary = (Path(tmp) / n for n in ("guest.o", "guest.elf", "guest.bin"))
        defsyms = [a for name, value in syms for a in ("--defsym", f"{name}={value}")]
        steps = [
            ["as", "--32" if args_32 else "--64", "-I", str(path.parent), *defsyms, "-o",
             str(obj), str(path)],
            ["ld", "-m", "elf_i386" if args_32 else "elf_x86_64", "-N", "--build-id=none",
             f"-Ttext={gpa:#x}", "-e", f"{gpa:#x}", "-o", str(elf), str(obj)],
            ["objcopy", "-O", "binary", str(elf), str(binary)],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode:
                # The tool's messages as it printed them (file:line: Error: ...), with the
                # temporary directory's names shortened to the file's own.
                messages = done.stderr.replace(str(obj), f"{path.stem}.o").replace(
                    str(elf), f"{path.stem}.elf").rstrip()
                raise AssemblerError(f"{step[0]} failed on {path}:\n{messages}")
        data = binary.read_bytes()
    if cached is not None:
        # Write then rename, so parallel test runs never read a half-written cache entry.
        tmp_file = cached.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp_file.write_bytes(data)
            tmp_file.replace(cached)
        except OSError:  # a full disk costs the cache, not the run
            with contextlib.suppress(OSError):
                tmp_file.unlink(missing_ok=True)
    return data
