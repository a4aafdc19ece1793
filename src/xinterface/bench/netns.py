"""Network namespaces for benchmarks and tests: every frame they send stays inside a
namespace they created (``ip netns add``) and delete afterwards. Needs root (CAP_SYS_ADMIN,
CAP_NET_ADMIN) and iproute2 (:func:`netns_usable`).

The process itself stays in its own namespace: a thread enters the namespace (``setns(2)``
changes only the calling thread's) just long enough to open a TAP or a socket there
(:func:`inside`); what it opened stays attached to that namespace afterwards.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000     # <linux/sched.h>
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()


def netns_usable() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and os.path.exists(
        "/dev/net/tun")


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def netns() -> Iterator[str]:
    """A new network namespace (only its loopback, down), deleted on exit."""
    name = f"xi-{os.getpid()}-{next(_counter)}"
    ip("netns", "add", name)
    # No IPv6: its router and multicast listener solicitations would be frames nobody sent.
    subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                   capture_output=True, check=False)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the block with this thread in namespace ``name``, then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def tap(ns: str, name: str, address: str) -> None:
    """A TAP interface ``name`` in ``ns``, with ``address`` (CIDR) on the host side, up."""
    ip("-n", ns, "tuntap", "add", "dev", name, "mode", "tap")
    ip("-n", ns, "addr", "add", address, "dev", name)
    ip("-n", ns, "link", "set", name, "up")
