"""The run state machine (xinterface.runstate) on its own, and pause/resume on real guests.

The first half drives :class:`RunStates` without KVM: every pair of states, legal or not,
and the rules that go with the moves (one ending per run, the close protocol). The second
half pauses and resumes guests that count in memory under real KVM, on whichever exit loop
the suite runs (it runs once on each).
"""

from __future__ import annotations

import errno
import itertools
import random
import struct
import threading
import time
from collections.abc import Callable

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm, wait_for
from xinterface.runstate import TRANSITIONS, IllegalTransition, RunControl, RunState, RunStates

S = RunState
PIO = xi.XIOEventFlags.PIO
COUNTER, PORT, EVERY = 0x8000, 0x5C0, 1 << 12


# --- the state machine alone --------------------------------------------------------------

# How to reach each state from IDLE with legal moves only.
PATHS: dict[RunState, list[RunState]] = {
    S.IDLE: [],
    S.RUNNING: [S.RUNNING],
    S.PAUSING: [S.RUNNING, S.PAUSING],
    S.PAUSED: [S.RUNNING, S.PAUSING, S.PAUSED],
    S.STOPPING: [S.RUNNING, S.STOPPING],
    S.CLOSED: [S.CLOSED],
}


def now(holder: RunStates | xi.Machine) -> RunState:
    """The state at this moment (a call: type checkers do not narrow it across moves)."""
    return holder.state


def ending(states: RunStates) -> tuple[str | None, int | None]:
    return states.reason, states.exit_code


class Recorder:
    """The machine's side of RunStates: counts kicks and un-kicks."""

    def __init__(self) -> None:
        self.kicks = 0
        self.unkicks = 0

    def states(self) -> RunStates:
        return RunStates(self.kick, self.unkick)

    def kick(self) -> None:
        self.kicks += 1

    def unkick(self) -> None:
        self.unkicks += 1


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, S)),
                         ids=lambda s: s.value)
def test_every_transition_is_the_table_s(source: RunState, target: RunState) -> None:
    states = Recorder().states()
    for step in PATHS[source]:
        states.move(step)
    assert now(states) is source
    if target in TRANSITIONS[source]:
        states.move(target)
        assert now(states) is target
        assert states.stopping == (target in (S.PAUSING, S.PAUSED, S.STOPPING))
    else:
        with pytest.raises(IllegalTransition) as info:
            states.move(target)
        assert info.value.errno == errno.EINVAL and info.value.argument == "state"
        assert now(states) is source  # refused: nothing changed


def test_the_table_has_every_state_and_closed_is_final() -> None:
    assert set(TRANSITIONS) == set(S)
    assert TRANSITIONS[S.CLOSED] == frozenset()
    # Every state but CLOSED can reach IDLE again, so no run is left without an end.
    for state in S:
        seen, todo = {state}, [state]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert (S.IDLE in seen) == (state is not S.CLOSED)


def test_kicks_on_pause_and_end_and_unkicks_on_run_and_resume() -> None:
    rec = Recorder()
    states = rec.states()
    states.begin(1)
    assert (rec.kicks, rec.unkicks) == (0, 1)
    states.move(S.PAUSING)
    states.move(S.PAUSED)
    assert rec.kicks == 1
    states.move(S.RUNNING)
    assert rec.unkicks == 2 and not states.stopping
    states.end("stopped")
    assert rec.kicks == 2 and states.stopping and now(states) is S.STOPPING


def test_the_first_ending_of_a_run_wins_and_an_error_waits_for_the_next_run() -> None:
    states = Recorder().states()
    late = ValueError("between runs")
    states.end("exit", 3, late)  # no run: only the error is kept
    assert now(states) is S.IDLE and ending(states) == (None, None)
    assert states.error is late
    assert states.take_error() is late and states.take_error() is None
    states.begin(1)
    states.end("exit", 7)
    states.end("reset")
    states.end("stopped")
    assert now(states) is S.STOPPING and ending(states) == ("exit", 7)
    assert states.finished() is False and now(states) is S.IDLE
    states.begin(1)  # a new run clears the last one's ending
    assert ending(states) == (None, None)
    assert states.finished() is False  # ended by finished() itself
    assert now(states) is S.IDLE


def test_a_run_starts_only_from_idle() -> None:
    states = Recorder().states()
    states.begin(2)
    with pytest.raises(xi.XInterfaceError) as busy:
        states.begin(2)
    assert busy.value.errno == errno.EBUSY
    states.end("stopped")
    states.finished()
    assert states.begin_close(False) is True
    with pytest.raises(xi.XInterfaceError) as closing:
        states.begin(1)
    assert closing.value.errno == errno.EBADF
    states.end_close(True)
    assert now(states) is S.CLOSED and states.begin_close(False) is False
    with pytest.raises(xi.XInterfaceError) as closed:
        states.begin(1)
    assert closed.value.errno == errno.EBADF


def test_close_from_inside_defers_during_a_run_and_refuses_outside_one() -> None:
    states = Recorder().states()
    with pytest.raises(xi.XInterfaceError) as info:
        states.begin_close(True)
    assert info.value.errno == errno.EDEADLK and now(states) is S.IDLE
    states.begin(1)
    assert states.begin_close(True) is False  # deferred: the run ends, run() closes
    assert now(states) is S.STOPPING and states.reason == "stopped"
    assert states.finished() is True


def test_a_refused_teardown_reopens() -> None:
    states = Recorder().states()
    assert states.begin_close(False) is True
    states.end_close(False)  # BufferError: the machine stays open
    assert now(states) is S.IDLE and not states.closing
    states.begin(1)
    assert now(states) is S.RUNNING


def test_close_waits_for_the_run_and_for_another_close() -> None:
    states = Recorder().states()
    states.begin(1)
    verdicts: list[bool] = []
    closers = [threading.Thread(target=lambda: verdicts.append(states.begin_close(False)))
               for _ in range(2)]
    for t in closers:
        t.start()
    assert states.wait_for(S.STOPPING, 5)
    time.sleep(0.02)
    assert verdicts == []  # the run has not finished
    states.finished()
    assert wait_for(lambda: len(verdicts) == 1)
    time.sleep(0.02)
    assert verdicts == [True]  # the other waits for this teardown
    states.end_close(True)
    for t in closers:
        t.join(5)
    assert sorted(verdicts) == [False, True] and now(states) is S.CLOSED


def test_wait_for_sees_a_move_from_another_thread() -> None:
    states = Recorder().states()
    assert states.wait_for(S.RUNNING, 0.01) is False
    timer = threading.Timer(0.05, states.begin, args=(1,))
    timer.start()
    assert states.wait_for(S.RUNNING, 5) is True
    timer.join()


def test_pause_waits_until_every_live_vcpu_is_parked_or_done() -> None:
    states = Recorder().states()
    states.begin(2)
    drained: list[int] = []
    result: list[bool] = []
    pauser = threading.Thread(target=lambda: result.append(states.pause(
        lambda: drained.append(1))))
    pauser.start()
    assert states.wait_for(S.PAUSING, 5)
    resumed: list[bool] = []
    parker = threading.Thread(target=lambda: resumed.append(states.park()))
    parker.start()
    time.sleep(0.02)
    assert now(states) is S.PAUSING and drained == []  # one vCPU still out
    states.vcpu_done(lambda: None)  # the other one halted
    pauser.join(5)
    assert result == [True] and drained == [1] and now(states) is S.PAUSED
    assert states.resume() is True
    parker.join(5)
    assert resumed == [True] and now(states) is S.RUNNING
    assert states.resume() is False  # not paused


def test_a_drain_that_fails_ends_the_run_with_its_error() -> None:
    states = Recorder().states()
    states.begin(0)
    bad = ValueError("posted handler")

    def drain() -> None:
        raise bad

    assert states.pause(drain) is False
    assert now(states) is S.STOPPING and states.error is bad and states.reason == "error"


def test_run_control_without_a_runner_does_nothing_and_with_one_names_the_ending() -> None:
    RunControl().exit(1)  # a Vm nobody runs
    calls: list[tuple[str, int | None, BaseException | None]] = []
    control = RunControl(lambda *ending: calls.append(ending))
    exc = RuntimeError("x")
    control.stop()
    control.exit(5)
    control.request_reset()
    control.fail(exc)
    assert calls == [("stopped", None, None), ("exit", 5, None), ("reset", None, None),
                     ("error", None, exc)]


# --- pause and resume on real guests --------------------------------------------------------


class Counting:
    """A machine whose vCPUs count in memory (tests/guests/count_forever.S), run on a thread,
    each vCPU's multiples of EVERY posted to PORT."""

    def __init__(self, guest: Assemble, vcpus: int = 1, poll: float | None = None) -> None:
        self.m = xi.Machine(memory=1 << 20, vcpus=vcpus)
        self.vcpus = vcpus
        self.poll = poll
        self.m.load_flat(guest("count_forever", COUNTER=COUNTER, PORT=PORT, EVERY=EVERY),
                         mode="protected")
        self.intf = xi.bind(self.m)
        self.posted: list[int] = []
        self.intf.ioevent(PORT, 4, PIO, delivery=xi.Delivery.POSTED,
                          signal=lambda ev, data: self.posted.append(
                              int.from_bytes(data, "little")))
        self.results: list[xi.RunResult] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.results.append(self.m.run(timeout=60, poll=self.poll))
        except BaseException as exc:
            self.errors.append(exc)

    def start(self) -> Counting:
        self.thread.start()
        assert wait_for(lambda: all(c > 2 * EVERY for c in self.counters()))
        return self

    def counters(self) -> tuple[int, ...]:
        if self.m.closed:
            return ()
        raw = self.intf.copy_from(COUNTER, 4 * self.vcpus)
        return struct.unpack(f"<{self.vcpus}I", raw)

    def ended(self) -> xi.RunResult:
        self.thread.join(30)
        assert not self.thread.is_alive(), "run() did not return"
        assert self.errors == []
        return self.results[0]

    def close(self) -> None:
        self.m.close()
        self.thread.join(30)


def moving(c: Counting, seconds: float = 0.05) -> list[bool]:
    before = c.counters()
    time.sleep(seconds)
    return [b != a for a, b in zip(before, c.counters(), strict=True)]


@needs_kvm
@pytest.mark.parametrize(("vcpus", "poll"), [(1, None), (2, None), (1, 0.002)],
                         ids=["1-vcpu", "2-vcpus", "poller"])
def test_a_paused_guest_holds_still_and_a_resumed_one_goes_on(guest: Assemble, vcpus: int,
                                                              poll: float | None) -> None:
    # With a poller (run(poll=...)), it goes on draining through the pause and ends with it.
    c = Counting(guest, vcpus, poll).start()
    try:
        for _ in range(3):
            assert c.m.pause() is True
            assert now(c.m) is S.PAUSED and c.m.running
            assert c.m.pause() is True  # already paused
            frozen = c.counters()
            assert moving(c) == [False] * vcpus
            # Drained: the ring holds nothing, and the last posted write of the only vCPU
            # is its latest multiple of EVERY (it may have been paused right before the
            # out that follows its last increment).
            assert c.m.vm.ring is not None and not c.m.vm.ring.pending()
            if vcpus == 1:
                assert frozen[0] - EVERY <= c.posted[-1] <= frozen[0]
            count = len(c.posted)
            time.sleep(0.02)
            assert len(c.posted) == count
            assert c.m.resume() is True and now(c.m) is S.RUNNING
            assert wait_for(lambda: all(moving(c)))
        c.m.stop()
        result = c.ended()
        assert result.reason == "stopped" and now(c.m) is S.IDLE
        values = c.posted if vcpus == 1 else []
        assert values == sorted(values) and len(set(values)) == len(values)
    finally:
        c.close()


@needs_kvm
def test_stop_while_paused_ends_the_run_and_the_next_run_goes_on(guest: Assemble) -> None:
    c = Counting(guest).start()
    try:
        assert c.m.pause()
        frozen = c.counters()
        c.m.stop()
        result = c.ended()
        assert result.reason == "stopped" and now(c.m) is S.IDLE
        assert c.counters() == frozen  # stopped where it was paused
        assert c.m.resume() is False and c.m.pause() is False  # no run
        c.results.clear()
        c.thread = threading.Thread(target=c._run, daemon=True)
        c.thread.start()
        assert wait_for(lambda: c.counters()[0] > frozen[0])  # resumed where it stopped
        c.m.stop()
        assert c.ended().reason == "stopped"
    finally:
        c.close()


@needs_kvm
def test_close_while_paused_ends_the_run_and_closes(guest: Assemble) -> None:
    c = Counting(guest, 2).start()
    assert c.m.pause()
    c.m.close()
    assert c.m.closed and now(c.m) is S.CLOSED
    assert c.ended().reason == "stopped"
    assert c.m.pause() is False and c.m.resume() is False


@needs_kvm
def test_a_timeout_while_paused_ends_the_run(guest: Assemble) -> None:
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("count_forever", COUNTER=COUNTER, PORT=PORT, EVERY=EVERY),
                    mode="protected")
        paused: list[bool] = []
        timer = threading.Timer(0.05, lambda: paused.append(m.pause()))
        timer.start()
        result = m.run(timeout=0.5)
        timer.join()
        assert paused == [True] and result.reason == "timeout" and now(m) is S.IDLE


@needs_kvm
def test_pause_from_a_handler_is_refused(guest: Assemble) -> None:
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("count_forever", COUNTER=COUNTER, PORT=PORT, EVERY=EVERY),
                    mode="protected")
        seen: list[int] = []

        def handler(ev: xi.XIOEvent, data: bytes) -> None:
            try:
                m.pause()
            except xi.XInterfaceError as exc:
                seen.append(exc.errno or 0)
            m.stop()

        xi.bind(m).ioevent(PORT, 4, PIO, signal=handler)
        assert m.run(timeout=30).reason == "stopped"
        assert seen == [errno.EDEADLK]


@needs_kvm
def test_a_device_ending_the_run_while_it_pauses_wins(guest: Assemble) -> None:
    # The debug-exit device goes through the same ending as stop(): a pause racing it
    # loses, and run() reports the device's exit.
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("count_forever", COUNTER=COUNTER, PORT=PORT, EVERY=EVERY),
                    mode="protected")
        verdicts: list[bool] = []

        def handler(ev: xi.XIOEvent, data: bytes) -> None:
            ev.intf.vm.run_control.exit(1)
            threading.Thread(target=lambda: verdicts.append(m.pause())).start()

        xi.bind(m).ioevent(PORT, 4, PIO, signal=handler)
        result = m.run(timeout=30)
        assert (result.reason, result.exit_code) == ("exit", 1)
        assert wait_for(lambda: verdicts == [False])


@needs_kvm
@pytest.mark.parametrize("ending", ["stop", "close"])
def test_threads_racing_pause_resume_and_the_end_never_hang(guest: Assemble,
                                                           ending: str) -> None:
    rng = random.Random(7)
    for _ in range(8):
        c = Counting(guest, 2).start()
        go = threading.Event()
        failures: list[BaseException] = []
        end = c.m.stop if ending == "stop" else c.m.close
        racers = [threading.Thread(target=_racer, args=(go, failures, action, n, rng.random()))
                  for action, n in ((c.m.pause, 20), (c.m.pause, 20), (c.m.resume, 30),
                                    (end, 1))]
        for t in racers:
            t.start()
        go.set()
        for t in racers:
            t.join(30)
            assert not t.is_alive(), "a pause, resume or end hung"
        assert failures == []
        assert c.ended().reason == "stopped"
        assert now(c.m) is (S.IDLE if ending == "stop" else S.CLOSED)
        c.close()
        assert c.m.closed


def _racer(go: threading.Event, failures: list[BaseException], action: Callable[[], object],
           n: int, seed: float) -> None:
    """``action()`` ``n`` times once ``go`` is set, with random sub-millisecond gaps."""
    r = random.Random(seed)
    go.wait()
    try:
        for _ in range(n):
            action()
            time.sleep(r.random() * 1e-3)
    except BaseException as exc:
        failures.append(exc)
