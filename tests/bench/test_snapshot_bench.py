"""Where the Linux snapshot figures find the test kernel: the environment's paths, else the
checkout's build cache, never a build of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from xinterface.bench import snapshot as bench


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    bench.linux_images.cache_clear()
    yield
    bench.linux_images.cache_clear()


def test_the_environment_names_the_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bench.KERNEL_ENV, "/k/vmlinux")
    monkeypatch.setenv(bench.INITRD_ENV, "/k/initramfs.cpio")
    assert bench.linux_images() == ("/k/vmlinux", "/k/initramfs.cpio")


def test_an_empty_cache_skips_the_figures_and_builds_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(bench.KERNEL_ENV, raising=False)
    monkeypatch.delenv(bench.INITRD_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(bench.LinuxUnavailable):
        bench.linux_images()
    assert list(tmp_path.iterdir()) == []   # nothing built, nothing made
