"""The exceptions of xinterface, each carrying the data that explains it."""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Mapping


class XInterfaceError(OSError):
    """Misuse of the xinterface API, with the errno the kernel would return.

    ``argument`` and ``value`` name what was wrong, as the message does.
    """

    def __init__(
        self, code: int, message: str, *, argument: str | None = None, value: object = None
    ) -> None:
        super().__init__(code, f"{message} ({_errno.errorcode.get(code, code)})")
        self.argument = argument
        self.value = value

    def __str__(self) -> str:
        # OSError would print "[Errno 22] ..."; the message already names the errno.
        return str(self.strerror)


class KvmError(OSError):
    """A KVM ioctl failed; ``ioctl`` names it and ``errno`` is the kernel's."""

    def __init__(self, ioctl: str, code: int, detail: str = "") -> None:
        text = f"{ioctl} failed: {os.strerror(code)}"
        if detail:
            text += f" ({detail})"
        super().__init__(code, text)
        self.ioctl = ioctl

    def __str__(self) -> str:
        return str(self.strerror)


class KvmInterruptedError(KvmError, InterruptedError):
    """A KVM ioctl returned ``EINTR``: a signal, or ``immediate_exit`` for ``KVM_RUN``."""


class KvmAgainError(KvmError, BlockingIOError):
    """A KVM ioctl returned ``EAGAIN`` (``KVM_RUN``: an AP left wait-for-SIPI; run it again)."""


def kvm_error(ioctl: str, code: int, detail: str = "") -> KvmError:
    """The :class:`KvmError` for ``code``, of the ``OSError`` subclass Python gives that errno
    (``InterruptedError`` for ``EINTR``, ``BlockingIOError`` for ``EAGAIN``)."""
    cls = {_errno.EINTR: KvmInterruptedError, _errno.EAGAIN: KvmAgainError}.get(code, KvmError)
    return cls(ioctl, code, detail)


class GuestError(Exception):
    """The guest stopped badly: triple fault, failed entry, internal error, unknown exit.

    ``regs`` holds the general registers (and a few system ones) of the vCPU at the stop.
    """

    def __init__(self, message: str, *, vcpu: int, regs: Mapping[str, int] | None = None) -> None:
        self.vcpu = vcpu
        self.regs: dict[str, int] = dict(regs or {})
        text = f"vCPU {vcpu}: {message}"
        if self.regs:
            text += "\n" + format_regs(self.regs)
        super().__init__(text)


class GuestIOError(GuestError):
    """A guest I/O access could not be served: a handler raised, or strict mode refused it.

    The handler's exception, if any, is chained as ``__cause__``.
    """

    def __init__(
        self, message: str, *, vcpu: int, space: str, addr: int, length: int,
        regs: Mapping[str, int] | None = None,
    ) -> None:
        self.space = space
        self.addr = addr
        self.length = length
        super().__init__(message, vcpu=vcpu, regs=regs)


def format_regs(regs: Mapping[str, int]) -> str:
    """Four registers a line, in the order given, as hex."""
    items = [f"{name:>6}={value:#018x}" for name, value in regs.items()]
    return "\n".join("  ".join(items[i : i + 4]) for i in range(0, len(items), 4))
