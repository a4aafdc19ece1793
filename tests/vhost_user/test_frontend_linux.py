"""Linux on our VMM with every device of the frontend in another process: ``xinterface boot
--board pc --kernel`` (virtio-pci) with ``--disk vhost-user=`` to Debian's
qemu-storage-daemon, ``--net vhost-user=`` to ``xinterface serve net`` on a TAP in a network
namespace the test creates, and ``--rng vhost-user=`` to ``xinterface serve rng``. One boot
carries the three: /init mounts the ext2 image, reads a file and writes one, pings the TAP's
address through eth0, and reads /dev/hwrng. After the run, the image holds the guest's file
and ``e2fsck -n`` finds it clean."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import needs_kvm, wait_for
from tests.linux.conftest import BUILD, linux  # noqa: F401 (the session fixture)
from tests.linux.test_linux_boot import BASE_CMDLINE
from tests.netns import ip, needs_netns, netns, tap
from tests.vhost_user.test_frontend import qsd_command

pytestmark = [needs_kvm, needs_netns]

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}
HELLO = "hello from qemu-storage-daemon"
MAC = "52:54:00:12:34:57"
RUN_TIMEOUT = 900   # about 60 s on an idle host; the two cores are shared with other runs


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str
    image: Path
    tap_packets: tuple[int, int]       # the TAP's (received, sent), seen in the namespace
    backend_errors: dict[str, str]     # each backend's stderr


def tap_packets(ns: str, name: str) -> tuple[int, int]:
    [link] = json.loads(ip("-n", ns, "-s", "-j", "link", "show", name))
    return int(link["stats64"]["rx"]["packets"]), int(link["stats64"]["tx"]["packets"])


@pytest.fixture(scope="module")
def run(linux: dict[str, str], tmp_path_factory: pytest.TempPathFactory  # noqa: F811
        ) -> Iterator[Run]:
    top = tmp_path_factory.mktemp("frontend-linux")
    image = top / "disk.img"
    subprocess.run([sys.executable, str(BUILD), "ext2", str(image), "--file",
                    f"hello.txt={HELLO}"], check=True, capture_output=True, timeout=60)
    socks = {kind: top / f"{kind}.sock" for kind in ("blk", "net", "rng")}
    errors = {kind: top / f"{kind}.err" for kind in socks}
    with netns() as ns:
        tap(ns, "xitap0", "10.0.2.2/24")
        commands = {
            "blk": qsd_command(image, socks["blk"]),
            "net": ["ip", "netns", "exec", ns, sys.executable, "-m", "xinterface", "serve",
                    "net", "--tap", "xitap0", "--socket-path", str(socks["net"])],
            "rng": [sys.executable, "-m", "xinterface", "serve", "rng", "--socket-path",
                    str(socks["rng"])],
        }
        backends: list[subprocess.Popen[bytes]] = []
        try:
            for kind, command in commands.items():
                with errors[kind].open("wb") as err:
                    backends.append(subprocess.Popen(command, env=ENV, stdout=err,
                                                     stderr=err))
                assert wait_for(socks[kind].exists, 60), errors[kind].read_text()
            cmdline = f"{BASE_CMDLINE} quiet xinterface.write xinterface.hwrng xinterface.net"
            done = subprocess.run(
                [sys.executable, "-m", "xinterface", "boot", "--board", "pc", "--memory",
                 "128M", "--kernel", linux["vmlinux"], "--initrd", linux["initramfs"],
                 "--append", cmdline, "--timeout", str(RUN_TIMEOUT - 60),
                 "--disk", f"vhost-user={socks['blk']}",
                 "--net", f"vhost-user={socks['net']},mac={MAC}",
                 "--rng", f"vhost-user={socks['rng']}"],
                capture_output=True, text=True, errors="replace", timeout=RUN_TIMEOUT,
                check=False, env=ENV)
            packets = tap_packets(ns, "xitap0")
        finally:
            for process in backends:
                process.terminate()
            for process in backends:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    yield Run(done.returncode, done.stdout, done.stderr, image, packets,
              {kind: path.read_text(errors="replace") for kind, path in errors.items()})


def test_linux_on_pc_writes_ext2_through_qemu_storage_daemon(run: Run) -> None:
    out = run.stdout
    assert run.status == 0, (run.stderr[-2000:], out[-3000:])   # reboot=p: a reset
    assert "XINTERFACE-INIT-DONE" in out, out[-3000:]
    assert f"disk: {HELLO}" in out and "disk: wrote guest.txt" in out, out[-3000:]


def test_the_image_holds_the_guests_file_and_is_clean(run: Run) -> None:
    fsck = subprocess.run(["e2fsck", "-n", "-f", str(run.image)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    cat = subprocess.run(["debugfs", "-R", "cat /guest.txt", str(run.image)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert cat.stdout == "written by the guest\n", cat.stdout + cat.stderr


def test_linux_pings_the_tap_through_serve_net(run: Run) -> None:
    assert "net: 10.0.2.2 answered" in run.stdout, run.stdout[-3000:]
    received, sent = run.tap_packets
    assert received >= 2 and sent >= 2, run.tap_packets   # ARP and ICMP, both ways
    assert run.backend_errors["net"] == "", run.backend_errors["net"]


def test_linux_reads_dev_hwrng_from_serve_rng(run: Run) -> None:
    found = re.search(r"^hwrng:((?: [0-9a-f]{2}){16})\s*$", run.stdout, re.MULTILINE)
    assert found, run.stdout[-3000:]
    assert len(set(bytes.fromhex(found[1]))) > 4     # 16 random bytes, not a zeroed buffer
    assert run.backend_errors["rng"] == "", run.backend_errors["rng"]
