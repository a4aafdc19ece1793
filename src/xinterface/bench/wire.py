"""The far end of a benchmark's wire, in a process of its own so that its Python never holds
the VMM's GIL: it sends numbered frames to the guest, or reads and counts the guest's.

    python -m xinterface.bench.wire send --fd N --count C     # a SOCK_SEQPACKET socket
    python -m xinterface.bench.wire send --iface tapq --count C   # AF_PACKET, a TAP's host side
    python -m xinterface.bench.wire recv --fd N

``send`` starts when a byte arrives on stdin and sends in batches of 64 with ``sendmmsg(2)``
until ``--count`` frames are sent (0: until SIGTERM or the peer's close): on a socket the
peer's queue paces it; on a TAP's host side nothing does (the TAP drops what its queue cannot
hold), so it paces itself by the TAP's drops, starting from ``--pause`` seconds between
batches (:class:`_Pacer`). Both print the number of frames sent or read when they end.
Frames: destination 52:54:00:12:34:56 (the guest's MAC), source 52:54:00:12:34:57, EtherType
0x88b5 (IEEE 802 local experimental), the frame's sequence number (32 bits, little-endian)
at offset 14, zeros to ``--size`` bytes.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import socket
import struct
import sys
import time

BATCH = 64
MIN_PAUSE, MAX_PAUSE = 1e-5, 2e-3
GUEST_MAC = bytes.fromhex("525400123456")
PEER_MAC = bytes.fromhex("525400123457")
ETHERTYPE = b"\x88\xb5"
SEQ_OFFSET = 14
ETH_P_ALL = 0x0003          # <linux/if_ether.h>


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int))


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("hdr", _Msghdr), ("len", ctypes.c_uint))


def frame(seq: int, size: int) -> bytes:
    head = GUEST_MAC + PEER_MAC + ETHERTYPE + struct.pack("<I", seq)
    return head + bytes(max(0, size - len(head)))


class _Pacer:
    """Pauses between batches on a TAP, as short as the TAP's queue allows: the pause grows by
    half when the TAP dropped frames since the last batch (its ``tx_dropped``: the device did
    not read them in time) and shrinks by a tenth when it did not, between MIN_PAUSE and
    MAX_PAUSE (64 frames per 2 ms at the slowest: more than a device here takes, so the
    queue of 1000 frames never runs dry). A sender that never paused would take a CPU from
    the VMM it measures."""

    def __init__(self, iface: str | None, pause: float) -> None:
        self.path = f"/sys/class/net/{iface}/statistics/tx_dropped" if iface else None
        self.pause = pause
        self.dropped = self._read()

    def _read(self) -> int:
        if self.path is None:
            return 0
        try:
            with open(self.path) as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def wait(self) -> None:
        if not self.pause:
            return
        dropped = self._read()
        if dropped > self.dropped:
            self.pause = min(self.pause * 1.5, MAX_PAUSE)
        else:
            self.pause = max(self.pause * 0.9, MIN_PAUSE)
        self.dropped = dropped
        time.sleep(self.pause)


_stop = False


def _on_term(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def send(sock: socket.socket, count: int, size: int, pacer: _Pacer) -> int:
    """``count`` frames (more if ``count`` is 0: until the peer goes away or SIGTERM);
    frames sent."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffers = [ctypes.create_string_buffer(frame(0, size), size) for _ in range(BATCH)]
    iovs = (_Iovec * BATCH)(*[_Iovec(ctypes.addressof(b), size) for b in buffers])
    msgs = (_Mmsghdr * BATCH)()
    for i in range(BATCH):
        msgs[i].hdr.iov = ctypes.pointer(iovs[i])
        msgs[i].hdr.iovlen = 1
    seq = 0
    fd = sock.fileno()
    while (count == 0 or seq < count) and not _stop:
        n = BATCH if count == 0 else min(BATCH, count - seq)
        for i in range(n):
            struct.pack_into("<I", buffers[i], SEQ_OFFSET, seq + i)
        sent = libc.sendmmsg(fd, msgs, n, 0)
        if sent < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
                time.sleep(1e-4)    # the device queue is full: try again
                continue
            break                   # the peer is gone
        seq += sent
        pacer.wait()
    return seq


def recv(sock: socket.socket) -> int:
    """Frames read until the peer closes, or SIGTERM."""
    n = 0
    buf = bytearray(65536)
    sock.settimeout(0.1)          # to see SIGTERM: recv is retried after a signal (PEP 475)
    while not _stop:
        try:
            got = sock.recv_into(buf)
        except TimeoutError:
            continue
        except OSError:
            break
        if not got and sock.type == socket.SOCK_SEQPACKET:
            break
        n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xinterface.bench.wire")
    parser.add_argument("what", choices=["send", "recv"])
    parser.add_argument("--fd", type=int)
    parser.add_argument("--iface")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=60)
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((args.iface, 0))
    signal.signal(signal.SIGTERM, _on_term)
    if args.what == "send":
        sys.stdin.buffer.read(1)
        n = send(sock, args.count, args.size, _Pacer(args.iface, args.pause))
    else:
        n = recv(sock)
    print(n, flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
