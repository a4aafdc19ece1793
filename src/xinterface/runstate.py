"""The run of a VM as a state machine, and the run-control object devices end it through.

A machine is in one :class:`RunState` at a time; :data:`TRANSITIONS` is the whole list of
moves, and :class:`RunStates` makes them, under one lock and its Condition, together with
everything else a run keeps: how it ended (reason, exit code, error), how many vCPU threads
are still in it and how many are parked, which thread called ``run()``, and whether a
``close()`` began or was deferred to the end of the run. ``stopping`` is the one field read
without the lock: the exit loops read it before every ``KVM_RUN``
(:class:`xinterface.runner.vcpu_loop.LoopOwner`), and it is written only by a transition.

::

    IDLE -> RUNNING -> PAUSING -> PAUSED -> RUNNING   (pause, resume)
               |          |          |
               +----------+----------+--> STOPPING -> IDLE -> CLOSED

A run ends in exactly one way, :meth:`RunStates.end`, whoever asks: ``stop()``, a device
(through :class:`RunControl`), a system event, a failing handler, a timeout, ``close()``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import threading
from collections.abc import Callable, Iterator

from .errors import XInterfaceError


class RunState(enum.Enum):
    """Where a machine's run is."""

    IDLE = "idle"          # no run: run() may start one
    RUNNING = "running"    # vCPU threads in KVM_RUN
    PAUSING = "pausing"    # pause() asked every vCPU out of KVM_RUN and waits for them
    PAUSED = "paused"      # every live vCPU parked outside KVM_RUN, the POSTED ring drained
    STOPPING = "stopping"  # the run ends: vCPU threads leave, run() joins them
    CLOSED = "closed"      # torn down; nothing more


_S = RunState
# Every legal move. A run always ends through STOPPING, so run() joins its threads on every
# path; CLOSED is reached only from IDLE, once no run is left to outlive the teardown.
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    _S.IDLE: frozenset({_S.RUNNING, _S.CLOSED}),
    _S.RUNNING: frozenset({_S.PAUSING, _S.STOPPING}),
    _S.PAUSING: frozenset({_S.PAUSED, _S.STOPPING}),
    _S.PAUSED: frozenset({_S.RUNNING, _S.STOPPING}),
    _S.STOPPING: frozenset({_S.IDLE}),
    _S.CLOSED: frozenset(),
}
# The states of a run in progress: a stop() in any of them ends that run.
IN_RUN = frozenset({_S.RUNNING, _S.PAUSING, _S.PAUSED, _S.STOPPING})
# vCPUs must stay out of KVM_RUN.
_HOLD = frozenset({_S.PAUSING, _S.PAUSED, _S.STOPPING})

# (reason, exit_code, error) -> None: the one way to end a run (RunStates.end's signature).
EndRun = Callable[[str, "int | None", "BaseException | None"], None]


class IllegalTransition(XInterfaceError):
    """A move :data:`TRANSITIONS` does not list (``EINVAL``)."""


class RunStates:
    """One machine's run state and everything that goes with it, under one Condition.

    ``kick()`` is called with the lock held whenever vCPUs must leave ``KVM_RUN`` (a pause
    or an end); ``prepare()`` with the lock held when they may enter it again (a run starts
    or resumes). The machine sets ``immediate_exit`` and signals threads there, so a thread
    id read under this lock is never one that has already left (``vcpu_done``).
    ``owner``: what errors name as the ``machine`` argument (the machine itself).
    """

    def __init__(self, kick: Callable[[], None], prepare: Callable[[], None],
                 owner: object = None) -> None:
        self.cond = threading.Condition(threading.Lock())
        self._owner = self if owner is None else owner
        self._kick = kick
        self._prepare = prepare
        self._state = RunState.IDLE
        self.stopping = False   # read unlocked by the exit loops; written by _move only
        self.reason: str | None = None
        self.exit_code: int | None = None
        self.error: BaseException | None = None  # kept across runs until a run() raises it
        self.live = 0           # vCPU threads of this run that have not finished
        self.parked = 0         # of them, parked by a pause
        self.run_thread: int | None = None
        self.closing = False    # close() began: no run may start
        self.close_deferred = False  # close() from inside the run: run() closes on its way out
        self._tearing_down = False
        self._unclaimed = False  # a PAUSING that request_pause began and no pause() waits on
        self.held = 0           # hold()s in progress: no resume, run or close until they end

    @property
    def state(self) -> RunState:
        """The state now (read without the lock: it may change right after)."""
        return self._state

    def _now(self) -> RunState:
        # The state as it is now, after a wait (a call, so type checkers do not narrow it).
        return self._state

    def _move(self, to: RunState) -> None:
        """The one place the state changes (lock held)."""
        if to not in TRANSITIONS[self._state]:
            raise IllegalTransition(errno.EINVAL, f"run state {self._state.value} cannot "
                                    f"become {to.value}", argument="state", value=to)
        self._state = to
        if to is not RunState.PAUSING:
            self._unclaimed = False
        self.stopping = to in _HOLD
        if to is RunState.PAUSING or to is RunState.STOPPING:
            self._kick()
        elif to is RunState.RUNNING:
            self._prepare()
        self.cond.notify_all()

    def move(self, to: RunState) -> None:
        """Make one transition of :data:`TRANSITIONS`; ``EINVAL`` for any other."""
        with self.cond:
            self._move(to)

    def wait_for(self, state: RunState, timeout: float | None = None) -> bool:
        """Wait until the state is ``state``; False if ``timeout`` seconds passed first."""
        with self.cond:
            return self.cond.wait_for(lambda: self._state is state, timeout)

    # --- a run ------------------------------------------------------------------------------
    def begin(self, vcpus: int) -> None:
        """``run()`` starts a run of ``vcpus`` threads: ``EBADF`` once close() began, ``EBUSY``
        during a run. The previous run's outcome is cleared in the same step, so an end
        asked for from now on belongs to this run."""
        with self.cond:
            while self.held:
                self.cond.wait()
            if self.closing or self._state is RunState.CLOSED:
                raise XInterfaceError(errno.EBADF, "the machine is closing",
                                      argument="machine", value=self._owner)
            if self._state is not RunState.IDLE:
                raise XInterfaceError(errno.EBUSY, "the machine is already running",
                                      argument="machine", value=self._owner)
            self.run_thread = threading.get_ident()
            self.reason = self.exit_code = None
            self.live, self.parked = vcpus, 0
            self._move(RunState.RUNNING)

    def end(self, reason: str, exit_code: int | None = None,
            error: BaseException | None = None) -> None:
        """End the run in progress with ``reason`` (the first reason of a run wins).

        ``error`` is what ``run()`` raises; one that comes with no run in progress (an
        EVENTFD handler between runs) is raised by the next ``run()``.
        """
        with self.cond:
            self._end(reason, exit_code, error)

    def _end(self, reason: str, exit_code: int | None, error: BaseException | None) -> None:
        if error is not None and self.error is None:
            self.error = error
        if self._state in IN_RUN and self.reason is None:
            self.reason, self.exit_code = reason, exit_code
        if self._state in (RunState.RUNNING, RunState.PAUSING, RunState.PAUSED):
            self._move(RunState.STOPPING)

    def take_error(self) -> BaseException | None:
        """The error that ended the run (or came between runs), for ``run()`` to raise once."""
        with self.cond:
            error, self.error = self.error, None
            return error

    def finished(self) -> bool:
        """``run()`` is done with its threads: back to IDLE (through STOPPING when nothing
        ended the run, as when ``run()`` returned a kept result); whether a close() from
        inside the run waits for the caller to do it."""
        with self.cond:
            self._end("stopped", None, None)
            self._move(RunState.IDLE)
            self.run_thread = None
            deferred, self.close_deferred = self.close_deferred, False
            return deferred

    def wait_done(self, timeout: float | None) -> bool:
        """Wait until every vCPU thread of the run has finished; False on ``timeout``."""
        with self.cond:
            return self.cond.wait_for(lambda: self.live == 0, timeout)

    def wait_stopping(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the run to end; whether it is ending."""
        with self.cond:
            return self.cond.wait_for(lambda: self._state not in (
                RunState.RUNNING, RunState.PAUSING, RunState.PAUSED), timeout)

    def vcpu_done(self, finish: Callable[[], None]) -> None:
        """A vCPU thread's last step; ``finish()`` runs under the lock (it forgets the
        thread's id, so no kick signals a reused id)."""
        with self.cond:
            finish()
            self.live -= 1
            self.cond.notify_all()

    # --- pause ----------------------------------------------------------------------------
    def park(self) -> bool:
        """A vCPU thread out of ``KVM_RUN`` because of a pause waits here; True when the run
        resumed (enter ``KVM_RUN`` again), False when it ends."""
        with self.cond:
            if self._state not in (RunState.PAUSING, RunState.PAUSED):
                return False
            self.parked += 1
            self.cond.notify_all()
            try:
                self.cond.wait_for(lambda: self._state not in (RunState.PAUSING,
                                                               RunState.PAUSED))
            finally:
                self.parked -= 1
            return self._now() is RunState.RUNNING

    def request_pause(self) -> bool:
        """Begin a pause without waiting for it (a vCPU thread that must park itself, at a
        debugger's stop): RUNNING becomes PAUSING; the next :meth:`pause` completes it.
        False if the run was not running."""
        with self.cond:
            if self._state is not RunState.RUNNING:
                return self._state in (RunState.PAUSING, RunState.PAUSED)
            self._move(RunState.PAUSING)
            self._unclaimed = True
            return True

    def pause(self, drain: Callable[[], object]) -> bool:
        """Take every vCPU of the run out of ``KVM_RUN`` and park it, then ``drain()`` the
        POSTED ring; True once paused (also when already paused), False if no run is in
        progress or it ended meanwhile. ``drain`` runs without the lock: its handlers may
        end the run."""
        with self.cond:
            while self._state is RunState.PAUSING and not self._unclaimed:
                self.cond.wait()  # another pause(): share its outcome
            if self._state is RunState.PAUSED:
                return True
            if self._state is RunState.PAUSING:
                self._unclaimed = False  # request_pause's: this call completes it
            elif self._state is not RunState.RUNNING:
                return False
            else:
                self._move(RunState.PAUSING)
            self.cond.wait_for(lambda: self._state is not RunState.PAUSING
                               or self.parked == self.live)
            if self._now() is not RunState.PAUSING:
                return False
        try:
            drain()
        except BaseException as exc:
            self.end("error", None, exc)
            return False
        with self.cond:
            if self._now() is not RunState.PAUSING:
                return False
            self._move(RunState.PAUSED)
            return True

    def resume(self) -> bool:
        """Let a paused run go on; True if it did, False if it was not paused (a pause in
        progress is waited for first)."""
        with self.cond:
            while self._state is RunState.PAUSING or self.held:
                self.cond.wait()
            if self._state is not RunState.PAUSED:
                return False
            self._move(RunState.RUNNING)
            return True

    @contextlib.contextmanager
    def hold(self) -> Iterator[RunState]:
        """Keep a paused (or idle) machine so for the ``with`` block: a ``resume()``, a
        ``run()`` or a ``close()`` from any thread waits until it ends (a stop still ends a
        paused run, whose vCPUs then leave without entering ``KVM_RUN``). ``EBUSY`` if the
        machine is neither paused nor idle; the state held is the ``with``'s value. The
        holder must not itself resume, run or close the machine inside the block (it would
        wait for itself)."""
        with self.cond:
            state = self._state
            if state not in (RunState.PAUSED, RunState.IDLE) or self.closing:
                raise XInterfaceError(errno.EBUSY, f"the machine is {state.value}, not "
                                      "paused or idle", argument="machine", value=self._owner)
            self.held += 1
        try:
            yield state
        finally:
            with self.cond:
                self.held -= 1
                self.cond.notify_all()

    # --- close ----------------------------------------------------------------------------
    def begin_close(self, from_inside: bool) -> bool:
        """``close()`` asks for the end of any run; True when the caller must tear down now.

        ``from_inside``: the caller is a handler of this VM or the thread in ``run()``;
        waiting for the run would wait for itself, so during a run the close is deferred
        to ``run()`` (False), and outside one it is ``EDEADLK``. Otherwise this waits for
        the run to end and for any other close() tearing down, then returns True, or False
        if that one closed the machine.
        """
        with self.cond:
            if self._state is RunState.CLOSED:
                return False
            if from_inside or self.run_thread == threading.get_ident():
                if self._state is RunState.IDLE:
                    raise XInterfaceError(errno.EDEADLK, "close() from a handler outside a "
                                          "run would release the machine under the "
                                          "handler; close it after the handler returns",
                                          argument="machine", value=self._owner)
                self.closing = self.close_deferred = True
                self._end("stopped", None, None)
                return False
            self.closing = True
            self._end("stopped", None, None)
            while not (self._now() is RunState.CLOSED
                       or (self._now() is RunState.IDLE and not self._tearing_down
                           and not self.held)):
                self.cond.wait()
            if self._now() is RunState.CLOSED:
                return False
            self._tearing_down = True
            return True

    def end_close(self, closed: bool) -> None:
        """The teardown of :meth:`begin_close` is over: CLOSED, or (``BufferError``) open
        again so close() can be retried."""
        with self.cond:
            self._tearing_down = False
            if closed:
                self._move(RunState.CLOSED)
            else:
                self.closing = False
                self.cond.notify_all()


class RunControl:
    """How a device ends the run of the VM it is attached to, without knowing the runner.

    The VM hands it to devices (``intf.vm.run_control``); the runner made it with its one
    way to end a run. A VM that nothing runs has one that does nothing.
    """

    def __init__(self, end: EndRun | None = None) -> None:
        self._end = end

    def stop(self) -> None:
        """End the current run, reason ``"stopped"``."""
        self._call("stopped", None, None)

    def exit(self, status: int) -> None:
        """End the current run with reason ``"exit"`` and ``exit_code=status``."""
        self._call("exit", status, None)

    def request_reset(self) -> None:
        """End the current run with reason ``"reset"`` (the guest asked for a reset)."""
        self._call("reset", None, None)

    def fail(self, exc: BaseException) -> None:
        """A handler off the vCPU threads failed: the run ends and ``run()`` re-raises
        ``exc``."""
        self._call("error", None, exc)

    def _call(self, reason: str, exit_code: int | None, error: BaseException | None) -> None:
        if self._end is not None:
            self._end(reason, exit_code, error)
