"""The runner: a :class:`~xinterface.vm.Vm`, one thread per vCPU, and the run/stop protocol.

The VM (memory, buses, delivery paths, bound clients) is :class:`~xinterface.vm.Vm`; this
module only runs it. Each vCPU thread runs a :class:`~xinterface.runner.vcpu_loop.VcpuLoop`, which
talks to the machine through the narrow :class:`~xinterface.runner.vcpu_loop.LoopOwner` contract.

Stopping follows the kernel's documented protocol (Documentation/virt/kvm/api.rst,
``immediate_exit``): set ``immediate_exit`` in the vCPU's ``kvm_run``, then send the vCPU
thread a signal. Whether the thread is inside ``KVM_RUN`` or about to enter it, ``KVM_RUN``
returns ``EINTR`` and the exit loop sees the stop flag.

The run is a state machine (:mod:`xinterface.runstate`): idle, running, pausing, paused,
stopping, closed. A run begins when ``run()`` moves it to running, in the same step as it
clears the previous run's outcome: a ``stop()`` or ``close()`` from then on belongs to this
run and ends it (docs/guarantees.md). Every ending (``stop()``, a device through the VM's
:class:`~xinterface.runstate.RunControl`, a system event, a failing handler, the timeout,
``close()``) goes through :meth:`Machine.request_stop`.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import BinaryIO, ClassVar, NamedTuple, TextIO

from .. import loader
from ..errors import GuestIOError, XInterfaceError
from ..iobus import Bus, IoBus
from ..kvm import uapi
from ..memory import GuestMemory
from ..runstate import IN_RUN, RunControl, RunState, RunStates
from ..vm import Vm
from .vcpu_loop import DebugHook, VcpuLoop

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
            from ..loader import cpuid

            make_cpuid = cpuid.template(cpu)
        self.console = console
        self.trace = trace
        self.vcpus: list[VcpuLoop] = []
        # A guest debugger (xinterface.gdb), set by serve_gdb; the exit loops ask it about
        # debug exits. None: those end the run as any unexpected exit.
        self.debugger: DebugHook | None = None
        self._states = RunStates(self._kick, self._unkick, self)
        self._kept: RunResult | None = None  # an ended run's outcome that an interrupt hid
        _install_kick_handler()
        # What devices end a run through: the one way, request_stop.
        self.control = RunControl(self.request_stop)
        self.vm = Vm(memory, vcpus, irqchip=irqchip, strict=strict, cpuid=make_cpuid,
                     run_control=self.control)
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
        return self._states.state in IN_RUN

    @property
    def state(self) -> RunState:
        """Where the run is: idle, running, pausing, paused, stopping or closed."""
        return self._states.state

    @property
    def exit_code(self) -> int | None:
        """The status of the current or last run's debug exit (reason ``"exit"``), else
        None."""
        return self._states.exit_code

    def wait_for(self, state: RunState, timeout: float | None = None) -> bool:
        """Wait until the run is in ``state``; False if ``timeout`` seconds passed first."""
        return self._states.wait_for(state, timeout)

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
    def strict(self) -> bool:
        """Unclaimed accesses stop the run with an error instead of all-ones / dropped."""
        return self.vm.strict

    @strict.setter
    def strict(self, value: bool) -> None:
        self.vm.strict = value

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

    @property
    def stopping(self) -> bool:
        """vCPUs must stay out of ``KVM_RUN`` (a pause, or the end of the run)."""
        return self._states.stopping

    def park(self, loop: VcpuLoop) -> bool:
        """A vCPU out of its loop waits here while the run is paused; True on resume."""
        return self._states.park()

    def vcpu_done(self, loop: VcpuLoop) -> None:
        def forget() -> None:
            # After this, no kick signals the thread: its id may be reused.
            loop.thread_id = None
        self._states.vcpu_done(forget)

    # --- loading --------------------------------------------------------------------------
    def load_flat(self, image: bytes, gpa: int = 0x1000, mode: str = "real") -> None:
        """Place ``image`` at ``gpa`` and start every vCPU there in ``mode``."""
        if not isinstance(image, bytes | bytearray | memoryview):
            raise XInterfaceError(errno.EINVAL, f"image must be bytes, not "
                                  f"{type(image).__name__}", argument="image", value=image)
        memory = self._memory()
        self._kept = None  # a new start: nothing of the last run is pending
        loader.load_flat(memory, [v.vcpu for v in self.vcpus], bytes(image), gpa, mode)

    def set_entry(self, rip: int) -> None:
        """Start every vCPU at ``rip`` (in the mode the last load set): an ELF's ``e_entry``
        inside the image :meth:`load_flat` placed."""
        if isinstance(rip, bool) or not isinstance(rip, int) or not 0 <= rip < 1 << 64:
            raise XInterfaceError(errno.EINVAL, f"rip {rip!r} is not an address",
                                  argument="rip", value=rip)
        self.vm.check_open()
        for loop in self.vcpus:
            regs = loop.vcpu.get_regs()
            regs.rip = rip
            loop.vcpu.set_regs(regs)

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
        is drained at every exit and when the run ends anyway). ``timeout`` counts paused
        time too.
        Raises the error that stopped the run (``GuestError``, a handler's exception).
        """
        _check_seconds(timeout, "timeout", zero=True)
        _check_seconds(poll, "poll", zero=False)
        self.vm.check_open()
        # The run begins here, in one step with clearing the last run's outcome: a stop()
        # or close() from now on is this run's.
        self._states.begin(len(self.vcpus))
        for loop in self.vcpus:
            loop.halted = False
        try:
            result = self._run(timeout, poll)
        except BaseException:
            if self._states.finished():
                # close() was called from a handler; this run's error says more than close's.
                with contextlib.suppress(Exception):
                    self.close()
            raise
        if self._states.finished():
            self.close()
        return result

    def _run(self, timeout: float | None, poll: float | None) -> RunResult:
        states = self._states
        error = states.take_error()  # a handler failed between runs (the EVENTFD thread)
        if error is not None:
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
            if not states.wait_done(timeout):
                self.request_stop("timeout")
        except BaseException:
            # An interrupt (KeyboardInterrupt): never leave vCPU threads running behind the
            # caller. If the guest had ended the run already (every vCPU halted, or a debug
            # exit, reset or shutdown), that outcome is kept for the next run(), which
            # returns it instead of resuming the guest past its end.
            with states.cond:
                ended = states.reason if states.reason in _GUEST_ENDINGS else None
            self._finish(threads, poller)
            if ended is None and all(loop.halted for loop in self.vcpus):
                ended = "hlt"
            if ended is not None and states.error is None:
                self._kept = RunResult(ended, states.exit_code, self._exits(before))
            raise
        self._finish(threads, poller)
        error = states.take_error()
        if error is not None:
            raise error
        reason = states.reason or "stopped"
        if reason == "stopped" and all(loop.halted for loop in self.vcpus):
            reason = "hlt"
        return RunResult(reason, states.exit_code, self._exits(before))

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
        if self._states.error is None:
            try:
                self.vm.flush()  # posted writes of this run reach their handlers first
            except BaseException as exc:
                self.request_stop("error", None, exc)
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
        states = self._states
        while not states.wait_stopping(0):
            try:
                self.vm.flush()
            except BaseException as exc:
                self.request_stop("error", None, exc)
                return
            states.wait_stopping(interval)

    def stop(self) -> None:
        """End the current run from any thread; ``run()`` returns reason ``"stopped"``."""
        self.request_stop("stopped")

    def exit(self, status: int) -> None:
        """End the current run with reason ``"exit"`` and ``exit_code=status``."""
        self.request_stop("exit", status)

    def request_stop(self, reason: str, exit_code: int | None = None,
                     error: BaseException | None = None) -> None:
        """End the current run: the one way, whoever asks (the first reason of a run wins).

        ``exit_code`` goes with ``"exit"``; ``error`` is what ``run()`` raises (reason
        ``"error"``), also when it came between runs (the next ``run()`` raises it).
        """
        self._states.end(reason, exit_code, error)

    def pause(self) -> bool:
        """Take every vCPU of the run out of ``KVM_RUN`` and park it, then drain the POSTED
        ring: the guest's state holds still until :meth:`resume`. True once paused (also
        when it was), False when no run is in progress or it ended first. A stop or
        ``close()`` while paused ends the run. ``EDEADLK`` from a handler of this VM, which
        a vCPU of the run may be waiting for.
        """
        if self.vm.grace.inside():
            raise XInterfaceError(errno.EDEADLK, "pause() from a handler of this VM would "
                                  "wait for the vCPU that runs it", argument="machine",
                                  value=self)
        return self._states.pause(self.vm.flush)

    def hold(self) -> contextlib.AbstractContextManager[RunState]:
        """``with machine.hold():`` keeps a paused or idle machine so until the block ends:
        ``resume()``, ``run()`` and ``close()`` from other threads wait for it (a snapshot
        holds it while it reads the state). ``EBUSY`` if it is neither paused nor idle."""
        return self._states.hold()

    def request_pause(self) -> bool:
        """Begin a pause without waiting (from a vCPU thread that parks itself right after,
        at a debugger's stop); the next :meth:`pause` completes it. False if no run is
        running or pausing."""
        return self._states.request_pause()

    def serve_gdb(self, address: str, *, wait: bool = False,
                  arch: str | None = None) -> object:
        """Serve GDB's remote protocol on ``address`` (``tcp::PORT``, ``tcp:HOST:PORT`` or
        ``unix:PATH``) from a thread; ``wait``: every vCPU holds before its first
        instruction until a debugger attaches. ``arch``: the description GDB gets
        (``"i8086"``, ``"i386"``, ``"i386:x86-64"``; None: by vCPU 0's mode when GDB asks, as
        for a 64-bit kernel that starts in 32-bit code). Returns the
        :class:`xinterface.gdb.server.GdbServer` (``close()`` it, or close the machine)."""
        from ..gdb.server import GdbServer  # imported here: most machines are never debugged

        return GdbServer.start(self, address, wait=wait, arch=arch)

    def resume(self) -> bool:
        """Let a paused run go on from where it was; True if it did, False if it was not
        paused."""
        return self._states.resume()

    def _kick(self) -> None:
        """Get every vCPU out of ``KVM_RUN`` (the run state's lock is held, see
        runstate.RunStates): ``immediate_exit``, then the kick signal."""
        me = threading.get_ident()
        for loop in self.vcpus:
            loop.set_immediate_exit(1)
            if loop.thread_id is not None and loop.thread_id != me:
                signal.pthread_kill(loop.thread_id, KICK_SIGNAL)

    def _unkick(self) -> None:
        for loop in self.vcpus:
            loop.set_immediate_exit(0)

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
        if vm is None:
            return
        # Deferred (False) from a handler during a run: waiting for the run here would wait
        # for this very thread, so run() closes on its way out (runstate.begin_close).
        if not self._states.begin_close(vm.grace.inside()):
            return
        debugger, self.debugger = self.debugger, None
        if debugger is not None and hasattr(debugger, "close"):
            debugger.close()
        try:
            error = vm.close_clients()
        except BufferError:
            self._states.end_close(False)
            raise
        try:
            for loop in self.vcpus:
                loop.release()
            self.vcpus = []
            vm.close()
        finally:
            self._states.end_close(True)
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
