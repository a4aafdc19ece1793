"""The TAP backend: Ethernet frames through a kernel TAP interface (``/dev/net/tun``).

Linux's ``Documentation/networking/tuntap.rst``: opening ``/dev/net/tun`` and issuing
``TUNSETIFF`` with ``IFF_TAP | IFF_NO_PI`` attaches the descriptor to the TAP interface of
that name (creating it if it does not exist: that needs ``CAP_NET_ADMIN``, as attaching to
one owned by someone else does). Each ``read`` then returns one frame the host sent out of
the interface, each ``write`` puts one frame into the host's stack as received on it. No
``IFF_VNET_HDR``: the device offers no checksum or segmentation offloads, so there is
nothing for a virtio-net header to carry and frames are plain.

When the interface is deleted under us (``ip link del``), the descriptor stays open but
``read`` and ``write`` fail with ``EBADFD`` and ``poll`` reports ``POLLERR``
(``drivers/net/tun.c``, ``tun_chr_poll``): the device counts it and goes on.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Sequence

from ...errors import XInterfaceError

TUN_PATH = "/dev/net/tun"
# <linux/if_tun.h>: TUNSETIFF is _IOW('T', 202, int); its argument is a struct ifreq.
_IOC_WRITE = 1
TUNSETIFF = _IOC_WRITE << 30 | 4 << 16 | ord("T") << 8 | 202
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16                      # <linux/if.h>
# struct ifreq: char ifr_name[IFNAMSIZ]; union { short ifr_flags; ... } (40 bytes on x86-64)
IFREQ = struct.Struct("16sH22x")


class TapBackend:
    """The TAP interface ``name`` (attached to, or created if missing and privileged).

    ``TapBackend("tap0")``; ``XInterfaceError`` naming ``name`` if it cannot be opened
    (``EPERM`` without ``CAP_NET_ADMIN``, ``EBUSY`` if another process has it, ``EINVAL``
    for a bad name). The interface's configuration (addresses, up/down) is the host's.
    """

    def __init__(self, name: str) -> None:
        raw = name.encode("ascii", "replace") if isinstance(name, str) else b""
        if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b"\0" in raw:
            raise XInterfaceError(errno.EINVAL, f"TAP name {name!r} must be 1 to "
                                  f"{IFNAMSIZ - 1} characters", argument="name", value=name)
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise XInterfaceError(exc.errno or errno.ENODEV, f"{TUN_PATH}: {exc.strerror}",
                                  argument="name", value=name) from None
        try:
            reply = fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(raw, IFF_TAP | IFF_NO_PI))
        except OSError as exc:
            os.close(fd)
            raise XInterfaceError(exc.errno or errno.EINVAL, f"TAP {name}: TUNSETIFF: "
                                  f"{exc.strerror}", argument="name", value=name) from None
        self._fd = fd
        # The kernel writes back the name it used (a template such as "tap%d" is filled in).
        self.name = IFREQ.unpack(reply)[0].rstrip(b"\0").decode("ascii", "replace")

    def fileno(self) -> int:
        return self._fd

    def recv_into(self, buffer: bytearray) -> int | None:
        try:
            return os.readv(self._fd, [buffer])
        except BlockingIOError:
            return None

    def received(self, n: int) -> int:
        """A read of ``n`` bytes of the descriptor (by the compiled data path): a frame."""
        return n

    def send(self, frame: Sequence[memoryview]) -> None:
        os.writev(self._fd, frame)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __repr__(self) -> str:
        return f"TapBackend({self.name!r})"
