"""Build and run the C floor (``benchmarks/floor.c``) with gcc, cached by source hash."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..loader.asm import cache_dir

FLOOR_SOURCE = Path(__file__).with_name("floor.c")
MODES = ("pio", "mmio", "coalesced-pio", "coalesced-mmio", "eventfd-pio")


class FloorUnavailable(RuntimeError):
    """No compiler, or the kernel lacks what a mode needs: the floor figure is skipped."""


@dataclass(frozen=True)
class FloorResult:
    mode: str
    count: int
    ns_total: int
    ns_per_write: float
    exits: int
    drained: int
    signalled: int


def build_floor(cache: Path | None = None) -> Path:
    """The compiled floor, rebuilt when floor.c changes."""
    source = FLOOR_SOURCE.read_bytes()
    binary = (cache or cache_dir().parent / "floor") / (
        "floor-" + hashlib.sha256(source).hexdigest()[:16])
    if binary.exists():
        return binary
    if shutil.which("gcc") is None:
        raise FloorUnavailable("gcc not found: install gcc to measure the C floor")
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    done = subprocess.run(["gcc", "-O2", "-o", str(tmp), str(FLOOR_SOURCE)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise FloorUnavailable(f"gcc failed on {FLOOR_SOURCE}: {done.stderr.strip()}")
    tmp.replace(binary)
    return binary


def run_floor(mode: str, count: int, *, binary: Path | None = None) -> FloorResult:
    if mode not in MODES:
        raise ValueError(f"floor mode {mode!r} is not one of {', '.join(MODES)}")
    exe = binary or build_floor()
    done = subprocess.run([str(exe), mode, str(count)], capture_output=True, text=True,
                          check=False)
    if done.returncode == 2:
        raise FloorUnavailable(done.stderr.strip())
    if done.returncode:
        raise RuntimeError(f"floor {mode} failed: {done.stderr.strip()}")
    data = json.loads(done.stdout)
    return FloorResult(data["mode"], data["count"], data["ns_total"], data["ns_per_write"],
                       data["exits"], data["drained"], data["signalled"])
