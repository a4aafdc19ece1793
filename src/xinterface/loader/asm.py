"""Assemble a guest from GNU as source into a flat binary linked at its gpa, with a cache.

Guests in this project are sources, never checked-in machine code: ``as`` then ``ld -N
-Ttext=GPA`` then ``objcopy -O binary``. Results are cached by the hash of the source and the
options, so a test suite assembles each guest once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

_TOOLS = ("as", "ld", "objcopy")


class AssemblerError(RuntimeError):
    """binutils is missing, or the source does not assemble; the message holds its stderr."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "xinterface" / "asm"


def assemble(source: str | Path, *, gpa: int, bits: int = 32,
             defines: dict[str, int] | None = None) -> bytes:
    """The flat binary of ``source`` (a path to a GNU as file) linked so its text starts at gpa.

    ``bits`` picks the object format: 32 (``--32``, for 16- and 32-bit code) or 64.
    ``defines`` become ``--defsym NAME=VALUE`` symbols the source can use.
    """
    path = Path(source)
    text = path.read_bytes()
    args_32 = bits != 64
    syms = sorted((defines or {}).items())
    key = hashlib.sha256(
        text + repr((gpa, args_32, syms, path.name)).encode()
    ).hexdigest()[:24]
    cached = cache_dir() / f"{path.stem}-{key}.bin"
    if cached.exists():
        return cached.read_bytes()
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        raise AssemblerError(f"{', '.join(missing)} not found: install binutils "
                             "(apt-get install binutils)")
    with tempfile.TemporaryDirectory(prefix="xinterface-asm-") as tmp:
        obj, elf, binary = (Path(tmp) / n for n in ("guest.o", "guest.elf", "guest.bin"))
        defsyms = [a for name, value in syms for a in ("--defsym", f"{name}={value}")]
        steps = [
            ["as", "--32" if args_32 else "--64", *defsyms, "-o", str(obj), str(path)],
            ["ld", "-m", "elf_i386" if args_32 else "elf_x86_64", "-N", "--build-id=none",
             f"-Ttext={gpa:#x}", "-e", f"{gpa:#x}", "-o", str(elf), str(obj)],
            ["objcopy", "-O", "binary", str(elf), str(binary)],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode:
                # One line: the tool's complaints without its warnings and temp-file noise.
                lines = [ln.strip() for ln in done.stderr.splitlines()
                         if ln.strip() and "warning" not in ln and "in function" not in ln]
                raise AssemblerError(f"{step[0]} failed on {path}: {'; '.join(lines)}")
        data = binary.read_bytes()
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so parallel test runs never read a half-written cache entry.
    tmp_file = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp_file.write_bytes(data)
    tmp_file.replace(cached)
    return data
