"""``--log-level`` shows what the VMM did about a guest; ``--metrics FILE`` writes its
counters as JSON lines on an interval and at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cli.harness import xinterface
from tests.conftest import GUESTS, needs_kvm
from xinterface.build import build, build_machine
from xinterface.observe.metrics import sample
from xinterface.spec import Boot, MachineSpec

pytestmark = needs_kvm
SEABIOS = "/usr/share/seabios/bios-microvm.bin"


def test_strict_unclaimed_access_is_logged_with_the_vcpu() -> None:
    shown = xinterface("run", GUESTS / "unclaimed_write.S", "--strict")
    assert shown.returncode == 1
    assert ("xinterface: ERROR: xinterface.runner.vcpu_loop: vcpu0: unhandled 1-byte write "
            "to port 0x99 (strict mode)") in shown.stderr
    quiet = xinterface("run", GUESTS / "unclaimed_write.S", "--strict", "--log-level",
                       "critical")
    assert quiet.returncode == 1 and "xinterface.runner" not in quiet.stderr
    bad = xinterface("run", GUESTS / "unclaimed_write.S", "--log-level", "loud")
    assert bad.returncode == 2 and "--log-level" in bad.stderr


def test_metrics_lines_on_an_interval_and_at_the_end(tmp_path: Path) -> None:
    out = tmp_path / "metrics.jsonl"
    done = xinterface("run", GUESTS / "unclaimed_write.S", "--metrics", out)
    assert done.returncode == 0, done.stderr
    (last,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert last["exits"]["io"] >= 3 and last["exits"]["hlt"] == 1
    assert last["unclaimed"] == {"pio_write": 1}     # port 0x99, dropped
    assert last["devices"] == {}                     # no board, no virtio device
    timed = xinterface("run", GUESTS / "count_in_rax.S", "--metrics", out, "--timeout", "2.5")
    assert timed.returncode == 124
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) >= 3                          # every second, then the end
    assert [line["elapsed"] for line in lines] == sorted(line["elapsed"] for line in lines)


@pytest.mark.skipif(not os.path.exists(SEABIOS), reason="needs Debian's seabios")
def test_metrics_name_each_virtio_device() -> None:
    spec = MachineSpec(memory=16 << 20, board="microvm", rng=True, boot=Boot(firmware=SEABIOS))
    with build_machine(spec) as machine:
        built = build(spec, machine)
        assert built.feed is not None
        built.feed(b"typed")                        # COM1 (no virtio-console here)
        devices = sample(machine, built.platform)["devices"]
    assert list(devices) == ["uart", "fw_cfg", "VirtioRng"]
    assert devices["uart"] == {"tx_bytes": 0, "rx_bytes": 5}
    assert devices["fw_cfg"] == {"dma_errors": 0}
