"""The runner: a :class:`~xinterface.vm.Vm`, one thread per vCPU, and the run/stop protocol.

The VM (memory, buses, delivery paths, bound clients) is :class:`~xinterface.vm.Vm`; this
module only runs it. Each vCPU thread runs a :class:`~xinterface.vcpu_loop.VcpuLoop`, which
talks to the machine through the narrow :class:`~xinterface.vcpu_loop.LoopOwner` contract.

Stopping follows the kernel's documented protocol (Documentation/virt/kvm/api.rst,
``immediate_exit``): set ``immediate_exit`` in the vCPU's ``kvm_run``, then send the vCPU
thread a signal. Whether the thread is inside ``KVM_RUN`` or about to enter it, ``KVM_RUN``
returns ``EINTR`` and the exit loop sees the stop flag.

A run begins when ``run()`` marks it running, under the machine's lock and in the same step
as it clears the previous run's stop: a ``stop()`` or ``close()`` from then on belongs to
this run and ends it (README, Guarantees).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import BinaryIO, ClassVar, NamedTuple, TextIO

from . import loader
from .delivery.posted import CoalescedRing
from .errors import GuestIOError, XInterfaceError
from .iobus import Bus, IoBus
from .kvm import uapi
from .memory import GuestMemory
from .vcpu_loop import VcpuLoop
from .vm import Vm

KICK_SIGNAL = signal.SIGRTMIN + 1

# Something that attaches devices to a new Machine (see Machine.default_devices).
DeviceFactory = Callable[["Machine"], object]


def _ignore_kick(signum: int, frame: object) -> None:
    """The kick's only job is to interrupt KVM_RUN with EINTR."""


def _install_kick_handler() -> None:
    # A handler (not SIG_IGN) is needed: an ignored signal is discarded and never interrupts
    # KVM_RUN. Python allows installing handlers only from the main thread.
    if signal.getsignal(KICK_SIGNAL) is _ignore_kick:
        return
    if threading.current_thread() is not threading.main_thread():
        raise XInterfaceError(
            errno.EINVAL, "the first Machine must be created (or xinterface imported) on the "
            "main thread, which installs the vCPU kick signal handler",
            argument="thread", value=threading.current_thread().name)
    signal.signal(KICK_SIGNAL, _ignore_kick)


if threading.current_thread() is threading.main_thread():
    _install_kick_handler()


class RunResult(NamedTuple):
    """How a run ended.

    ``reason``: ``"hlt"`` (every vCPU halted), ``"exit"`` (debug-exit port; ``exit_code`` set),
    ``"shutdown"`` / ``"reset"`` (a KVM system event), ``"stopped"`` (``stop()``), ``"timeout"``.
    ``exits`` counts the vCPU exits of this run by kind (``"io"``, ``"mmio"``, ``"hlt"``, ...).
    (A NamedTuple, not a dataclass: ``dataclasses`` imports ``inspect``, a sixth of
    ``xinterface run``'s start-up.)
    """

    reason: str
    exit_code: int | None
    exits: Counter[str]


class Machine:
    """A virtual machine with ``memory`` bytes of RAM (or ``(gpa, size)`` regions) and vCPUs.

    >>> with Machine(memory=1 << 20) as m:          # doctest: +SKIP
    ...     m.load_flat(image, gpa=0x1000, mode="real")
    ...     m.run(timeout=5.0).reason
    'hlt'

    ``m.vm`` is the :class:`~xinterface.vm.Vm` that ``xi.bind(m)`` binds to.
    ``debug_ports=True`` attaches :attr:`default_devices` (the 0xe9 console and 0xf4 exit
    ports; the package facade registers them, so this module imports no device).
    ``cpu`` names a CPU template (:mod:`xinterface.loader.cpuid`: ``"baseline"``, the features
    QEMU offers by default, or ``"host"``) for every vCPU; None keeps KVM's supported CPUID
    with each vCPU's APIC id. An unknown name is ``EINVAL`` (``argument="cpu"``).
    """

    default_devices: ClassVar[tuple[DeviceFactory, ...]] = ()

    def __init__(
        self,
        memory: int | Sequence[tuple[int, int]] = 64 << 20,
        vcpus: int = 1,
        *,
        strict: bool = False,
        irqchip: bool = False,
        console: BinaryIO | None = None,
        trace: TextIO | None = None,
        debug_ports: bool = True,
        cpu: str | None = None,
    ) -> None:
        # The CPU template's name is checked before the VM exists: nothing to undo.
        make_cpuid = None
        if cpu is not None:
            from .loader import cpuid

            make_cpuid = cpuid.template(cpu)
        self.console = console
        self.trace = trace
        self.vcpus: list[VcpuLoop] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a run ends
        self._close_lock = threading.Lock()
        self._all_done = threading.Event()
        self._live = 0
        self._running = False
        self._run_thread: int | None = None
        self._closing = False            # close() began: no run may start
        self._close_deferred = False     # close() from a handler: run() closes on its way out
        self._kept: RunResult | None = None  # an ended run's outcome that an interrupt hid
        self.stopping = False
        self._reason: str | None = None
        self._exit_code: int | None = None
        self._error: BaseException | None = None
        _install_kick_handler()
        self.vm = Vm(memory, vcpus, irqchip=irqchip, strict=strict, cpuid=make_cpuid)
        self.vm.owner = self
        ring = self.vm.ring
        assert ring is not None
        self.vcpus = [VcpuLoop(self, vcpu, self.vm.grace.slot(), ring) for vcpu in self.vm.vcpus]
        if debug_ports:
            try:
                for attach in self.default_devices:
                    attach(self)
            except BaseException:
                self.close()
                raise

    # --- the VM's parts, for convenience ----------------------------------------------------
    @property
    def fd(self) -> int:
        """The VM file descriptor, as ``bind()`` accepts it."""
        return self.vm.fd

    @property
    def closed(self) -> bool:
        return self.vm.closed

    @property
    def running(self) -> bool:
        """A run is in progress: from the moment ``run()`` began until it returns. A
        ``stop()`` or ``close()`` seen after this turned true ends that run."""
        return self._running

    @property
    def memory(self) -> GuestMemory | None:
        return self.vm.memory

    @property
    def pio_bus(self) -> IoBus:
        return self.vm.pio_bus

    @property
    def mmio_bus(self) -> IoBus:
        return self.vm.mmio_bus

    @property
    def irqchip(self) -> bool:
        return self.vm.irqchip

    @property
    def strict(self) -> bool:
        """Unclaimed accesses stop the run with an error instead of all-ones / dropped."""
        return self.vm.strict

    @strict.setter
    def strict(self, value: bool) -> None:
        self.vm.strict = value

    @property
    def ring(self) -> CoalescedRing | None:
        return self.vm.ring

    def flush(self) -> int:
        """Deliver every posted write waiting in the coalesced ring, in order; how many."""
        return self.vm.flush()

    # --- what the exit loop asks of its owner (vcpu_loop.LoopOwner) ----------------------------
    def buses(self) -> tuple[Bus, Bus]:
        """The PIO and MMIO buses as the exit loop sees them (wrapped when tracing)."""
        if self.trace is None:
            return self.vm.pio_bus, self.vm.mmio_bus
        from .trace import TracingBus

        return (TracingBus(self.vm.pio_bus, "pio", self.trace),
                TracingBus(self.vm.mmio_bus, "mmio", self.trace))

    def drain_posted(self, loop: VcpuLoop) -> None:
        self.vm.drain_posted(loop.slot, loop.index)

    def vcpu_done(self, loop: VcpuLoop) -> None:
        with self._lock:
            # After this, stop() never signals the thread: its id may be reused.
            loop.thread_id = None
            self._live -= 1
            if self._live == 0:
                self._all_done.set()

    # --- loading --------------------------------------------------------------------------
    def load_flat(self, image: bytes, gpa: int = 0x1000, mode: str = "real") -> None:
        """Place ``image`` at ``gpa`` and start every vCPU there in ``mode``."""
        if not isinstance(image, bytes | bytearray | memoryview):
            raise XInterfaceError(errno.EINVAL, f"image must be bytes, not "
                                  f"{type(image).__name__}", argument="image", value=image)
        memory = self._memory()
        self._kept = None  # a new start: nothing of the last run is pending
        loader.load_flat(memory, [v.vcpu for v in self.vcpus], bytes(image), gpa, mode)

    def load_firmware(self, firmware: str | os.PathLike[str] | bytes) -> None:
        """Map a firmware image (a path, or its bytes) as the platform does; vCPU 0 starts
        from the reset vector. See :mod:`xinterface.loader.firmware`."""
        if isinstance(firmware, bytes | bytearray | memoryview):
            data = bytes(firmware)
        elif isinstance(firmware, str | os.PathLike):
            try:
                with open(firmware, "rb") as file:
                    data = file.read()
            except OSError as exc:
                raise XInterfaceError(exc.errno or errno.EIO, f"firmware {firmware}: "
                                      f"{exc.strerror}", argument="firmware",
                                      value=firmware) from None
        else:
            raise XInterfaceError(errno.EINVAL, "firmware must be a path or bytes, not "
                                  f"{type(firmware).__name__}", argument="firmware",
                                  value=firmware)
        memory = self._memory()
        self._kept = None
        loader.load_firmware(memory, self.vcpus[0].vcpu, data)

    def _memory(self) -> GuestMemory:
        self.vm.check_open()
        assert self.vm.memory is not None
        return self.vm.memory

    # --- running --------------------------------------------------------------------------
    def run(self, timeout: float | None = None, *, poll: float | None = None) -> RunResult:
        """Run every vCPU from where it is until they all halt or the run is ended.

        ``poll``: also drain the POSTED ring every ``poll`` seconds from a poller thread (it
        is drained at every exit and when the run ends anyway).
        Raises the error that stopped the run (``GuestError``, a handler's exception).
        """
        _check_seconds(timeout, "timeout", zero=True)
        _check_seconds(poll, "poll", zero=False)
        self.vm.check_open()
        with self._lock:
            if self._closing:
                raise XInterfaceError(errno.EBADF, "the machine is closing", argument="machine",
                                      value=self)
            if self._running:
                raise XInterfaceError(errno.EBUSY, "the machine is already running",
                                      argument="machine", value=self)
            # The run begins here, in one step with clearing the last run's stop: a stop()
            # or close() from now on is this run's (issue 11: one that came between the two
            # used to be erased).
            self._running = True
            self._run_thread = threading.get_ident()
            self.stopping = False
            self._reason = self._exit_code = None
            self._all_done.clear()
            self._live = len(self.vcpus)
            for loop in self.vcpus:
                loop.set_immediate_exit(0)
                loop.halted = False
        try:
            result = self._run(timeout, poll)
        except BaseException:
            if self._end_run():
                # close() was called from a handler; this run's error says more than close's.
                with contextlib.suppress(Exception):
                    self.close()
            raise
        if self._end_run():
            self.close()
        return result

    def _end_run(self) -> bool:
        """The run is over; whether a close() from a handler waits for run() to do it."""
        with self._lock:
            self._running = False
            self._run_thread = None
            self._idle.notify_all()
            deferred, self._close_deferred = self._close_deferred, False
            return deferred

    def _run(self, timeout: float | None, poll: float | None) -> RunResult:
        if self._error is not None:  # a handler failed between runs (the EVENTFD thread)
            error, self._error = self._error, None
            raise error
        if self._kept is not None:  # see below: the last run ended before an interrupt
            kept, self._kept = self._kept, None
            return kept
        before = [list(loop.counts) for loop in self.vcpus]
        threads = [threading.Thread(target=loop.run, name=f"vcpu{loop.index}", daemon=True)
                   for loop in self.vcpus]
        poller = None
        if poll is not None:
            poller = threading.Thread(target=self._poll, args=(poll,), name="xinterface-poll",
                                      daemon=True)
        try:
            for thread in threads:
                thread.start()
            if poller is not None:
                poller.start()
            if not self._all_done.wait(timeout):
                self.request_stop("timeout")
        except BaseException:
            # An interrupt (KeyboardInterrupt): never leave vCPU threads running behind the
            # caller. If the guest had ended the run already (every vCPU halted, or a debug
            # exit, reset or shutdown), that outcome is kept for the next run(), which
            # returns it instead of resuming the guest past its end.
            with self._lock:
                ended = self._reason if self._reason in _GUEST_ENDINGS else None
            self._finish(threads, poller)
            if ended is None and all(loop.halted for loop in self.vcpus):
                ended = "hlt"
            if ended is not None and self._error is None:
                self._kept = RunResult(ended, self._exit_code, self._exits(before))
            raise
        self._finish(threads, poller)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        reason = self._reason or "stopped"
        if reason == "stopped" and all(loop.halted for loop in self.vcpus):
            reason = "hlt"
        return RunResult(reason, self._exit_code, self._exits(before))

    def _finish(self, threads: list[threading.Thread], poller: threading.Thread | None) -> None:
        """Stop and join every thread of the run, then deliver what the ring still holds."""
        self.request_stop("stopped")
        interrupt: BaseException | None = None
        for thread in [*threads, *([poller] if poller is not None else [])]:
            while thread.ident is not None and thread.is_alive():
                try:
                    thread.join()
                except BaseException as exc:  # a second Ctrl-C: still join, then raise it
                    interrupt = interrupt or exc
        if self._error is None:
            try:
                self.vm.flush()  # posted writes of this run reach their handlers first
            except BaseException as exc:
                self._error = exc
        self._flush_console()
        if interrupt is not None:
            raise interrupt

    def _exits(self, before: list[list[int]]) -> Counter[str]:
        exits: Counter[str] = Counter()
        for loop, old in zip(self.vcpus, before, strict=False):
            for code, (now, then) in enumerate(zip(loop.counts, old, strict=True)):
                if now != then:
                    exits[uapi.EXIT_REASON_NAMES.get(code, str(code)).lower()] += now - then
        return exits

    def _poll(self, interval: float) -> None:
        while not self.stopping:
            try:
                self.vm.flush()
            except BaseException as exc:
                self.fail(exc)
                return
            time.sleep(interval)

    def stop(self) -> None:
        """End the current run from any thread; ``run()`` returns reason ``"stopped"``."""
        self.request_stop("stopped")

    def request_reset(self) -> None:
        """End the current run with reason ``"reset"`` (the guest asked for a reset)."""
        self.request_stop("reset")

    def exit(self, status: int) -> None:
        """End the current run with reason ``"exit"`` and ``exit_code=status``."""
        self.request_stop("exit", status)

    def request_stop(self, reason: str, exit_code: int | None = None) -> None:
        """End the current run with ``reason`` (the first reason of a run wins)."""
        me = threading.get_ident()
        with self._lock:
            if self._reason is None and self._running:
                self._reason, self._exit_code = reason, exit_code
            self.stopping = True
            for loop in self.vcpus:
                loop.set_immediate_exit(1)
                if loop.thread_id is not None and loop.thread_id != me:
                    signal.pthread_kill(loop.thread_id, KICK_SIGNAL)

    def fail(self, exc: BaseException) -> None:
        """End the current run; ``run()`` re-raises ``exc``."""
        with self._lock:
            if self._error is None:
                self._error = exc
        self.request_stop("error")

    def _flush_console(self) -> None:
        out = self.console if self.console is not None else sys.stdout.buffer
        # A closed or broken console must not turn a finished run into an error.
        with contextlib.suppress(OSError, ValueError):
            out.flush()

    # --- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop any run, tear down every client, release every fd, mapping and thread.

        Harmless to call twice. A run in progress is stopped, and a run that has begun (see
        :attr:`running`) never outlives close(); a later ``run()`` raises ``EBADF``.
        From a handler (or a signal handler on the thread in ``run()``), close() stops the
        run and returns at once: ``run()`` closes the machine before it returns. From a
        handler outside any run, ``EDEADLK``.
        A client's map still exported to another buffer raises ``BufferError`` naming it; the
        machine then stays open so close() can be retried. A handler error raised while the
        clients are torn down is raised as ``GuestIOError`` once everything is released.
        """
        vm = getattr(self, "vm", None)
        if vm is None or (vm.closed and not self.vcpus):
            return
        with self._lock:
            if vm.grace.inside() or self._run_thread == threading.get_ident():
                # Waiting for the run here would wait for this very thread.
                if not self._running:
                    raise XInterfaceError(errno.EDEADLK, "close() from a handler outside a "
                                          "run would release the machine under the handler; "
                                          "close it after the handler returns",
                                          argument="machine", value=self)
                self._closing = self._close_deferred = True
                deferred = True
            else:
                self._closing = True
                deferred = False
        self.request_stop("stopped")
        if deferred:
            return
        with self._idle:
            while self._running:
                self._idle.wait()
        with self._close_lock:
            try:
                error = vm.close_clients()
            except BufferError:
                with self._lock:
                    self._closing = False
                raise
            for loop in self.vcpus:
                loop.release()
            self.vcpus = []
            vm.close()
        if error is not None:
            raise error

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
            return
        # An exception is on its way out: a handler error of the teardown (the machine is
        # closed all the same) must not replace it.
        with contextlib.suppress(GuestIOError):
            self.close()


# Run endings that the guest (or a device for it) chose: resuming would go past them.
_GUEST_ENDINGS = ("exit", "reset", "shutdown")


def _check_seconds(value: object, name: str, *, zero: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or not (value >= 0 if zero else value > 0):
        raise XInterfaceError(errno.EINVAL, f"{name} {value!r} must be None or a number of "
                              f"seconds {'>= 0' if zero else '> 0'}", argument=name, value=value)
