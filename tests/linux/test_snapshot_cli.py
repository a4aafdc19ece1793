"""``xinterface boot --kernel ... --snapshot-on`` and ``xinterface restore``: the Linux test
kernel snapshotted at /init's marker by one process and continued by another, from the
marker on (one boot for both)."""

from __future__ import annotations

from pathlib import Path

from tests.cli.harness import xinterface
from tests.conftest import needs_kvm
from tests.linux.test_cli_kernel import APPEND

pytestmark = needs_kvm
# The boot's limit is wide: on the Python exit loop, under the load of other tests, the
# kernel has taken over 240 s to reach /init here (docs/snapshot.md, Figures).

MARKER = "XINTERFACE-INIT-OK"
DONE = "XINTERFACE-INIT-DONE"


def test_linux_snapshotted_at_init_and_restored(linux: dict[str, str], tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    done = xinterface("boot", "--kernel", linux["vmlinux"], "--initrd", linux["initramfs"],
                      "--append", APPEND, "--snapshot-on", MARKER, "--snapshot", snap,
                      "--timeout", "600", timeout=700)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.endswith(MARKER), done.stdout[-2000:]   # paused right at the marker
    assert DONE not in done.stdout
    again = xinterface("restore", snap, "--until", DONE, "--timeout", "300", timeout=400)
    assert again.returncode == 0, again.stderr[-2000:]
    out = again.stdout
    # /init goes on from its marker: its next lines, and no second boot before them.
    assert "cmdline: console=ttyS0" in out and out.rstrip().endswith(DONE), out[-2000:]
    assert MARKER not in out and "Linux version" not in out, out[:2000]
