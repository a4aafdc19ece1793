"""close() and stop(): never lost, never hung, from any thread, a handler included, and on
runtimes whose ioctl retries EINTR.

docs/guarantees.md; each test reproduced a defect before its fix."""

from __future__ import annotations

import errno
import fcntl
import io
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import xinterface as xi
from tests.conftest import Assemble, finish, needs_kvm, wait_for
from tests.guarantees.helpers import EVENTFD, P_PORT, PIO, POSTED, SYNC, open_fds
from xinterface import accel
from xinterface.kvm import vcpufd as kvm_vcpu
from xinterface.runner import vcpu_loop

pytestmark = needs_kvm


# --- close() after a handler error ---------------------------------------------------------------


def test_close_completes_and_reports_a_handler_error_as_guest_io_error(
        guest: Assemble) -> None:
    xi.Machine(memory=1 << 20).close()  # process-wide state first, so it is not a leak
    fds = open_fds()
    m = xi.Machine(memory=1 << 20)
    m.load_flat(guest("vcpu_writes", PORT=P_PORT, COUNT=10), mode="protected")

    def handler(ev: xi.XIOEvent, payload: bytes) -> None:
        raise ValueError("handler bug")

    xi.bind(m).ioevent(P_PORT, 4, PIO, signal=handler, delivery=POSTED)
    with pytest.raises(xi.GuestIOError):
        m.run(timeout=30)  # the hlt exit drains the ring: the first entry raises, 9 stay
    with pytest.raises(xi.GuestIOError) as info:
        m.close()  # deassigning delivers the 9: the handler raises again
    assert isinstance(info.value.__cause__, ValueError)
    assert m.closed
    m.close()
    assert open_fds() == fds


# --- close() from a handler ----------------------------------------------------------------------


@pytest.mark.parametrize(("delivery", "poll"), [(SYNC, None), (POSTED, None), (POSTED, 0.0002),
                                                (EVENTFD, None)],
                         ids=["sync", "posted-vcpu", "posted-poller", "eventfd"])
def test_close_from_a_handler_ends_the_run_then_closes(
        guest: Assemble, delivery: xi.Delivery, poll: float | None) -> None:
    image = guest("write_forever", PORT=P_PORT)
    xi.Machine(memory=1 << 20).close()
    fds, threads = open_fds(), threading.active_count()

    def scenario() -> tuple[xi.Machine, xi.RunResult]:
        m = xi.Machine(memory=1 << 20)
        m.load_flat(image, mode="protected")
        xi.bind(m).ioevent(P_PORT, 4, PIO, delivery=delivery, signal=lambda ev, p: m.close())
        return m, m.run(timeout=20, poll=poll)

    for _ in range(3):
        m, result = finish(scenario, 30)
        assert result.reason == "stopped"
        assert m.closed
        assert open_fds() == fds
        assert threading.active_count() == threads


def test_close_from_a_handler_outside_a_run_is_refused(guest: Assemble) -> None:
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("vcpu_writes", PORT=P_PORT, COUNT=1), mode="protected")
        refused: list[xi.XInterfaceError] = []
        run_over = threading.Event()

        def handler(ev: xi.XIOEvent, payload: bytes) -> None:
            run_over.wait(10)
            try:
                m.close()
            except xi.XInterfaceError as exc:
                refused.append(exc)

        xi.bind(m).ioevent(P_PORT, 4, PIO, delivery=EVENTFD, signal=handler)
        assert m.run(timeout=30).reason == "hlt"
        run_over.set()
        assert wait_for(lambda: bool(refused))
        assert refused[0].errno == errno.EDEADLK
        assert not m.closed
    assert m.closed


# --- close() and stop() right after run() started ------------------------------------------------


def yield_at_every_call(frame: object, event: str, arg: object) -> None:
    if event in ("call", "c_call"):
        time.sleep(0)  # give the GIL away: another thread may act between any two steps


def start_run(m: xi.Machine, timeout: float) -> tuple[threading.Thread, list[xi.RunResult]]:
    """``m.run()`` on a thread that yields the GIL at every call it makes, so the caller acts
    inside the very first steps of the run; returns once ``m.running`` is true."""
    results: list[xi.RunResult] = []

    def body() -> None:
        sys.setprofile(yield_at_every_call)
        try:
            results.append(m.run(timeout=timeout))
        finally:
            sys.setprofile(None)

    runner = threading.Thread(target=body)
    runner.start()
    while not m.running and runner.is_alive():
        pass
    return runner, results


def test_close_right_after_run_started_stops_that_run(guest: Assemble,
                                                      fast_switching: None) -> None:
    image = guest("spin")
    for _ in range(40):
        m = xi.Machine(memory=64 << 10)
        m.load_flat(image, mode="protected")
        runner, results = start_run(m, timeout=5)
        m.close()  # must stop the run, not wait for it to time out
        runner.join()
        assert [r.reason for r in results] == ["stopped"]


def test_stop_right_after_run_started_is_not_lost(guest: Assemble,
                                                  fast_switching: None) -> None:
    with xi.Machine(memory=64 << 10) as m:
        m.load_flat(guest("spin"), mode="protected")
        for _ in range(100):
            runner, results = start_run(m, timeout=5)
            m.stop()
            runner.join()
            assert [r.reason for r in results] == ["stopped"]


def test_run_after_close_began_is_refused(guest: Assemble) -> None:
    with xi.Machine(memory=64 << 10) as m:
        m.load_flat(guest("spin"), mode="protected")
    with pytest.raises(xi.XInterfaceError) as info:
        m.run(timeout=1)
    assert info.value.errno == errno.EBADF


# --- SIGINT after the guest halted ---------------------------------------------------------------


def test_sigint_after_the_guest_halted_keeps_the_hlt_result(
        guest: Assemble, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.BytesIO()
    with xi.Machine(memory=1 << 20, console=out) as m:
        m.load_flat(guest("halt_twice"), mode="protected")
        finished = m.vcpu_done
        main = threading.main_thread().ident
        assert main is not None

        def interrupt_then_done(loop: vcpu_loop.VcpuLoop) -> None:
            # The guest has halted: Ctrl-C lands now, while run() still waits for the vCPU.
            signal.pthread_kill(main, signal.SIGINT)
            finished(loop)

        monkeypatch.setattr(m, "vcpu_done", interrupt_then_done)
        with pytest.raises(KeyboardInterrupt):
            m.run(timeout=10)
        monkeypatch.undo()
        # The next run reports the halt instead of running the guest past its hlt.
        assert m.run(timeout=10).reason == "hlt"
        assert out.getvalue() == b"A"
        assert m.run(timeout=10).reason == "hlt"  # then it resumes, as after any hlt
        assert out.getvalue() == b"AB"


# --- a runtime whose fcntl.ioctl retries EINTR (CPython 3.14) ------------------------------------


def retrying_ioctl(give_up: threading.Event) -> Callable[..., Any]:
    """fcntl.ioctl as CPython 3.14 has it: EINTR is retried inside the call, and off the main
    thread no signal handler runs to end the retry."""
    real = fcntl.ioctl

    def ioctl(fd: int, request: int, arg: Any = 0, mutate: bool = True) -> Any:
        while True:
            try:
                return real(fd, request, arg, mutate)
            except InterruptedError:
                if give_up.is_set():  # only so that a failing test does not spin forever
                    raise

    return ioctl


def test_stop_works_when_the_runtime_retries_eintr(
        guest: Assemble, monkeypatch: pytest.MonkeyPatch) -> None:
    give_up = threading.Event()
    monkeypatch.setattr(fcntl, "ioctl", retrying_ioctl(give_up))
    monkeypatch.setattr(kvm_vcpu, "FCNTL_IOCTL_RETRIES_EINTR", True)
    with xi.Machine(memory=64 << 10) as m:
        try:
            m.load_flat(guest("spin"), mode="protected")
            timer = threading.Timer(0.2, m.stop)
            timer.start()
            result = finish(lambda: m.run(timeout=None), 10)
            timer.join()
        finally:
            give_up.set()  # a failing run must not spin on after the test
        assert result.reason == "stopped"
        assert m.vcpus[0].vcpu.get_regs().rcx > 0  # the guest ran before the stop


@pytest.mark.skipif(accel.LOOP == "compiled", reason="the compiled loop enters KVM_RUN "
                    "from C, never through fcntl.ioctl: this checks the Python loop's call")
def test_the_simulated_retrying_ioctl_does_hang_a_loop_that_trusts_it(
        guest: Assemble, monkeypatch: pytest.MonkeyPatch) -> None:
    # The check of the simulation itself: a vCPU loop calling it for KVM_RUN never stops.
    give_up = threading.Event()
    monkeypatch.setattr(fcntl, "ioctl", retrying_ioctl(give_up))
    monkeypatch.setattr(kvm_vcpu, "FCNTL_IOCTL_RETRIES_EINTR", False)
    with xi.Machine(memory=64 << 10) as m:
        m.load_flat(guest("spin"), mode="protected")
        runner = threading.Thread(target=m.run, kwargs={"timeout": 0.2})
        runner.start()
        runner.join(2)
        hung = runner.is_alive()
        give_up.set()
        runner.join()
    assert hung
