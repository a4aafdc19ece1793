"""The linux.pc.* rows of `xinterface bench` (Linux on pc reading its disks with MSI-X and
with INTx): registered, paired and skipped without a Linux boot, and the guest's marks parsed
from a captured console."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from xinterface.bench import msix_linux, snapshot

# What /init prints with xinterface.readloop=4 xinterface.interrupts on two disks, MSI-X
# (the kernel's /proc/interrupts lines as `read -r` leaves them).
CONSOLE = """\
XINTERFACE-INIT-OK
readloop: vda one
readloop: vda start 4
readloop: vda end
readloop: vda reads 7
readloop: vdb one
readloop: vdb start 4
readloop: vdb end
readloop: vdb reads 9
irq: 24:          7   PCI-MSI 49152-edge      virtio0-config
irq: 25:          8   PCI-MSI 49153-edge      virtio0-req.0
irq: 26:          0   PCI-MSI 65536-edge      virtio1-config
irq: 27:         10   PCI-MSI 65537-edge      virtio1-req.0
XINTERFACE-INIT-DONE
"""


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    snapshot.linux_images.cache_clear()
    yield
    snapshot.linux_images.cache_clear()


def _captured() -> msix_linux.StampedConsole:
    console = msix_linux.StampedConsole()
    for line in CONSOLE.splitlines(keepends=True):
        # Split inside a line, as COM1's bytes arrive: a mark is stamped when its end does.
        console.write(line[:5].encode())
        console.write(line[5:].encode())
    return console


def test_the_marks_and_interrupt_lines_are_parsed() -> None:
    console = _captured()
    assert set(console.stamps) == {line for line in CONSOLE.splitlines()
                                   if line.startswith("readloop: ")}
    text = console.data.getvalue().decode()
    assert text == CONSOLE
    # vda: what this process raised; vdb with MSI-X: the guest's count for virtio1-req.0.
    disks = msix_linux.disk_figures(text, console.stamps, "msix", 4, {"vda": 21, "vdb": None})
    vda, vdb = disks["vda"], disks["vdb"]
    assert (vda.reads, vda.interrupts, vda.path) == (7, 21, "MSI-X message from this process")
    assert (vdb.reads, vdb.interrupts, vdb.path) == (9, 10, "irqfd (call fd to KVM)")
    assert vdb.interrupts_per_request == pytest.approx(10 / 9)
    assert vda.seconds_per_request is not None and vdb.seconds_per_request is not None
    # A mark missing (the guest stopped early): no time per request, and no reads.
    cut = text.split("readloop: vdb end")[0]
    stamps = {k: v for k, v in console.stamps.items() if not k.startswith("readloop: vdb e")}
    short = msix_linux.disk_figures(cut, stamps, "intx", 4, {"vda": 3, "vdb": 5})
    assert short["vdb"].seconds_per_request is None and short["vdb"].reads == 0
    assert short["vdb"].interrupts == 5 and short["vdb"].interrupts_per_request is None
    assert short["vda"].path == "INTx (ISR read, level line)"


def test_quick_skips_the_rows() -> None:
    rows, notices = msix_linux.figure_samples(quick=True)
    assert rows == [] and notices and "--quick" in notices[0]


def test_an_unbuilt_kernel_skips_the_rows_and_builds_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(snapshot.KERNEL_ENV, raising=False)
    monkeypatch.delenv(snapshot.INITRD_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rows, notices = msix_linux.figure_samples(quick=False)
    assert rows == [] and len(notices) == 1 and "linux.pc.* skipped" in notices[0]
    assert list(tmp_path.iterdir()) == []


def test_a_kernel_without_its_features_file_is_unavailable(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(snapshot.KERNEL_ENV, str(tmp_path / "vmlinux"))
    monkeypatch.setenv(snapshot.INITRD_ENV, str(tmp_path / "initramfs.cpio"))
    with pytest.raises(snapshot.LinuxUnavailable, match=r"features\.json"):
        msix_linux.bench_paths()
    (tmp_path / "features.json").write_text("{}")
    assert msix_linux.bench_paths()["features"] == str(tmp_path / "features.json")


def _rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
          rounds: msix_linux.Rounds) -> list[msix_linux.Row]:
    monkeypatch.setenv(snapshot.KERNEL_ENV, str(tmp_path / "vmlinux"))
    monkeypatch.setenv(snapshot.INITRD_ENV, str(tmp_path / "initramfs.cpio"))
    (tmp_path / "features.json").write_text("{}")
    if shutil.which("qemu-storage-daemon") is None:
        pytest.skip("qemu-storage-daemon not installed")
    rows, notices = msix_linux.figure_samples(quick=False, rounds=rounds)
    assert notices == []
    return rows


def test_the_rows_are_registered_and_each_msix_row_paired_with_intx(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rows = _rows(monkeypatch, tmp_path, msix_linux.Rounds())
    names = [name for name, _, _, _ in rows]
    assert len(names) == len(set(names))
    units = {name: unit for name, unit, _, _ in rows}
    for disk in ("blk", "vhost_user_blk"):
        for mode in ("intx", "msix"):
            assert units[f"linux.pc.{disk}.read.{mode}"] == "µs/request"
            assert units[f"linux.pc.{disk}.read.{mode}.irqs"] == "irqs/100 requests"
    assert units["linux.pc.read.msix.mmio_exits"] == "exits/boot"
    for name, _, _, reference in rows:
        if ".msix" in name:
            assert reference == name.replace(".msix", ".intx")
            assert names.index(reference) < names.index(name)
        else:
            assert reference is None
    # Each round boots once per mode, first: the rows that boot come before all others.
    assert names[:2] == ["linux.pc.blk.read.intx", "linux.pc.blk.read.msix"]


def test_the_other_rows_read_the_boot_of_their_round(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rounds = msix_linux.Rounds(reads=4)
    samples = {name: sample for name, _, sample, _ in _rows(monkeypatch, tmp_path, rounds)}
    with pytest.raises(RuntimeError, match="no boot"):
        samples["linux.pc.read.intx.mmio_exits"]()
    console = _captured()
    text = console.data.getvalue().decode()
    run = msix_linux.Run("msix", msix_linux.disk_figures(text, console.stamps, "msix", 4,
                                                         {"vda": 21, "vdb": None}),
                         {"mmio": 280, "io": 9})
    rounds.runs["msix"] = run
    assert samples["linux.pc.blk.read.msix.irqs"]() == pytest.approx(300)
    assert samples["linux.pc.vhost_user_blk.read.msix.irqs"]() == pytest.approx(1000 / 9)
    assert samples["linux.pc.read.msix.mmio_exits"]() == 280
    seconds = run.disks["vdb"].seconds_per_request
    assert seconds is not None
    assert samples["linux.pc.vhost_user_blk.read.msix"]() == pytest.approx(seconds * 1e6)
