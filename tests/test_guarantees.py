"""README "Guarantees": what holds under concurrency, on real guests and real KVM.

Each test reproduced one defect of issue 11 before its fix. Races are widened on purpose (a
guest-side spin between two writes, slow handlers, a short GIL switch interval, repeated
iterations) so that they failed reliably; a scenario that used to hang runs on a daemon
thread and fails when that thread is not done in time.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm, wait_for
from tests.virtio.helpers import BUF, Echo, rig
from xinterface import accel
from xinterface.devices import fw_cfg
from xinterface.kvm import vcpufd as kvm_vcpu
from xinterface.runner import vcpu_loop
from xinterface.virtio import Status

pytestmark = needs_kvm

PIO = xi.XIOEventFlags.PIO
SYNC, POSTED, EVENTFD = xi.Delivery.SYNC, xi.Delivery.POSTED, xi.Delivery.EVENTFD
P_PORT, S_PORT = 0x5A0, 0x5A4
FLAG = 0x8000
T = TypeVar("T")


def finish(body: Callable[[], T], seconds: float) -> T:
    """``body()`` on a daemon thread: its result, or a test failure if it hangs."""
    out: list[T] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            out.append(body())
        except BaseException as exc:
            err.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"hung: not done after {seconds} s")
    if err:
        raise err[0]
    return out[0]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch the GIL every microsecond: a thread loses it inside any short window."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def value(payload: bytes) -> int:
    return int.from_bytes(payload, "little") & 0xFFFFFF


# --- 1. a poller and a vCPU deassigning each other's events -----------------------------------


@pytest.mark.parametrize("vcpus", [1, 2])
def test_poller_and_vcpu_deassigning_each_others_events_do_not_deadlock(
        guest: Assemble, vcpus: int) -> None:
    # The POSTED handler, on the poller, deassigns the SYNC event; the SYNC handler, on a vCPU,
    # deassigns the POSTED event. The poller holds the ring while it waits for the vCPU's
    # grace period, so the vCPU must not wait for the ring as if it were busy in a handler.
    def scenario() -> xi.RunResult:
        with xi.Machine(memory=1 << 20, vcpus=vcpus) as m:
            m.load_flat(guest("posted_then_sync", POSTED=P_PORT, SYNC=S_PORT, COUNT=40,
                              DELAY=1000), mode="protected")
            intf = xi.bind(m)
            events: dict[str, xi.XIOEvent] = {}

            def on_posted(ev: xi.XIOEvent, payload: bytes) -> None:
                if threading.current_thread().name == "xinterface-poll":
                    time.sleep(0.002)
                    events["sync"].deassign()

            def on_sync(ev: xi.XIOEvent, payload: bytes) -> None:
                events["posted"].deassign()

            events["posted"] = intf.ioevent(P_PORT, 4, PIO, signal=on_posted, delivery=POSTED)
            events["sync"] = intf.ioevent(S_PORT, 4, PIO, signal=on_sync)
            return m.run(timeout=20, poll=0.0002)

    for _ in range(5):
        assert finish(scenario, 20).reason == "hlt"


# --- 2. POSTED order with a poller ------------------------------------------------------------


def test_posted_write_is_not_overtaken_while_the_poller_is_in_its_handler(
        guest: Assemble) -> None:
    count = 150
    log: list[tuple[str, int]] = []

    def on_posted(ev: xi.XIOEvent, payload: bytes) -> None:
        time.sleep(0.002)  # the guest's next (SYNC) write exits meanwhile
        log.append(("P", value(payload)))

    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("posted_then_sync", POSTED=P_PORT, SYNC=S_PORT, COUNT=count,
                          DELAY=1000), mode="protected")
        intf = xi.bind(m)
        intf.ioevent(P_PORT, 4, PIO, signal=on_posted, delivery=POSTED)
        intf.ioevent(S_PORT, 4, PIO, signal=lambda ev, p: log.append(("S", value(p))))
        assert m.run(timeout=60, poll=0.0002).reason == "hlt"
    assert log == [(kind, i) for i in range(1, count + 1) for kind in "PS"]


# --- 3. deassign() always completes -------------------------------------------------------------


def test_deassign_completes_when_the_handler_raises_inside_it(guest: Assemble) -> None:
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("writes_then_flag", PORT=P_PORT, COUNT=100, FLAG=FLAG, AFTER=5),
                    mode="protected")
        intf = xi.bind(m)
        deassigned = False
        late_calls = 0

        def handler(ev: xi.XIOEvent, payload: bytes) -> None:
            nonlocal late_calls
            if deassigned:
                late_calls += 1
            raise ValueError("handler bug")

        ev = intf.ioevent(P_PORT, 4, PIO, signal=handler, delivery=POSTED)
        results: list[xi.RunResult] = []
        runner = threading.Thread(target=lambda: results.append(m.run(timeout=30)))
        runner.start()
        try:
            # The guest's 100 writes wait in the ring: no exit and no poller drains them.
            assert wait_for(lambda: intf.copy_from(FLAG, 4) == b"\1\0\0\0")
            with pytest.raises(xi.GuestIOError) as info:
                ev.deassign()  # delivers the ring's entries: the first one raises
            deassigned = True
            assert isinstance(info.value.__cause__, ValueError)
            assert info.value.addr == P_PORT and info.value.space == "pio"
            ev.deassign()  # a second call does nothing
            again = intf.ioevent(P_PORT, 4, PIO, delivery=POSTED)  # the port is free
            again.deassign()
            intf.copy_to(FLAG, b"\2")  # the guest writes 5 more times, then halts
        finally:
            runner.join()
    assert late_calls == 0
    assert [r.reason for r in results] == ["hlt"]


# --- 4. close() after a handler error -----------------------------------------------------------


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


# --- 5. deassign() from outside any handler waits for the handler ------------------------------


def test_deassign_from_the_main_thread_waits_for_a_handler_blocked_in_another_deassign(
        guest: Assemble) -> None:
    # E's handler (SYNC, on the vCPU) deassigns F, whose EVENTFD handler is slow: E's handler
    # blocks there. E.deassign() from the main thread must still wait for E's handler.
    table = 0x100000
    with xi.Machine(memory=4 << 20) as m:
        m.load_flat(guest("replay", mode="long", TABLE=table), mode="long")
        intf = xi.bind(m)
        intf.copy_to(table, struct.pack("<BB6xQQ", 1, 4, 0x5B0, 1)
                     + struct.pack("<BB6xQQ", 1, 4, 0x5B4, 2) + bytes(24))
        f_running, release = threading.Event(), threading.Event()
        e_blocked, e_done = threading.Event(), threading.Event()

        def slow(ev: xi.XIOEvent, payload: bytes) -> None:
            f_running.set()
            release.wait(10)

        f = intf.ioevent(0x5B0, 4, PIO, signal=slow, delivery=EVENTFD)

        def on_e(ev: xi.XIOEvent, payload: bytes) -> None:
            f_running.wait(10)
            e_blocked.set()
            f.deassign()  # waits for slow() to return
            time.sleep(0.3)  # E's handler goes on after that: deassign(E) must wait for it
            e_done.set()

        e = intf.ioevent(0x5B4, 4, PIO, signal=on_e)
        runner = threading.Thread(target=m.run, kwargs={"timeout": 30})
        runner.start()
        try:
            assert e_blocked.wait(10)
            time.sleep(0.05)  # E's handler is inside f.deassign() now
            timer = threading.Timer(1.0, release.set)  # slow() returns a second from now
            timer.start()
            e.deassign()
            assert e_done.is_set()  # E's handler had returned
        finally:
            release.set()
            runner.join()


# --- 6. close() from a handler ------------------------------------------------------------------


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


# --- 7 and 8. close() and stop() right after run() started --------------------------------------


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


# --- 9. read-only memory: the ROM ---------------------------------------------------------------

ROM_SIZE = 256 << 10
ROM_BASE = (1 << 32) - ROM_SIZE  # 0xFFFC0000; its first 128 KiB have no RAM alias


def test_fw_cfg_dma_never_writes_the_rom(guest: Assemble) -> None:
    table, report, buf = 0x8000, 0x5F0, 0x9000
    select_read = (fw_cfg.FW_CFG_SIGNATURE << 16) | fw_cfg.DMA_CTL_SELECT | fw_cfg.DMA_CTL_READ
    in_rom = ROM_BASE + 0x1000  # a descriptor the firmware image holds
    image = bytearray(b"\xa5" * ROM_SIZE)
    image[0x1000 : 0x1010] = struct.pack(">IIQ", select_read, 4, buf)
    with xi.Machine(memory=2 << 20, console=io.BytesIO()) as m:
        m.load_firmware(bytes(image))
        m.load_flat(guest("fw_cfg_dma", TABLE=table, REPORT=report), mode="protected")
        intf = xi.bind(m)
        device = fw_cfg.FwCfg()
        device.attach(intf)
        intf.copy_to(0xA000, struct.pack(">IIQ", select_read, 4, ROM_BASE))  # target: ROM
        intf.copy_to(table, struct.pack("<3I", 0xA000, in_rom, 0xFFFFFFFF))
        reports: list[int] = []
        intf.ioevent(report, 4, PIO, signal=lambda ev, p: reports.append(
            int.from_bytes(p, "big")))
        assert m.run(timeout=60).reason == "hlt"
        assert intf.copy_from(ROM_BASE, ROM_SIZE) == bytes(image)  # untouched
        # The transfer into the ROM failed: the error bit. The descriptor in the ROM was
        # carried out (its target is RAM) but its status could not be written back.
        assert reports == [fw_cfg.DMA_CTL_ERROR, select_read]
        assert intf.copy_from(buf, 4) == b"QEMU"


def test_copy_to_read_only_memory_is_efault_and_copies_nothing() -> None:
    with xi.Machine(memory=2 << 20) as m:
        m.load_firmware(b"\xa5" * ROM_SIZE)
        intf = xi.bind(m)
        for gpa, length in [(ROM_BASE, 1), (ROM_BASE + 0x100, 0x1000), (ROM_BASE, ROM_SIZE)]:
            with pytest.raises(xi.XInterfaceError) as info:
                intf.copy_to(gpa, b"x" * length)
            assert info.value.errno == errno.EFAULT
            assert "read-only" in str(info.value)
        assert intf.copy_from(ROM_BASE, ROM_SIZE) == b"\xa5" * ROM_SIZE
        intf.copy_to(0xE0000, b"seen")  # the alias below 1 MiB is RAM, shared with the image
        with intf.vmap(ROM_BASE, 16) as rom:
            assert rom.addr.readonly
            assert bytes(rom.addr) == b"\xa5" * 16


def test_virtio_never_writes_the_rom() -> None:
    # The views of the ROM are read-only: a device-writable buffer or a used ring there is a
    # bad descriptor (DEVICE_NEEDS_RESET), never a write into the ROM nor a crash.
    with rig(memory=2 << 20) as r:
        r.machine.load_firmware(b"\xa5" * ROM_SIZE)  # punches RAM the rings' vmaps still view
        r.intf.copy_to(BUF, b"ping")
        r.queue.post([(BUF, 4, False), (ROM_BASE, 16, True)])
        r.device.notify(0)
        assert r.device.status & Status.DEVICE_NEEDS_RESET
        assert r.device.error is not None and "read-only" in r.device.error
        assert r.intf.copy_from(ROM_BASE, ROM_SIZE) == b"\xa5" * ROM_SIZE
    with xi.Machine(memory=2 << 20) as m:
        m.load_firmware(b"\xa5" * ROM_SIZE)
        dev = Echo(8)
        dev.attach(xi.bind(m), lambda kind: None)
        dev.set_status(Status.ACKNOWLEDGE | Status.DRIVER)
        dev.set_driver_features(1, 1)
        dev.set_status(dev.status | Status.FEATURES_OK)
        q = dev.queues[0]
        q.size, q.desc_addr, q.avail_addr, q.used_addr = 8, 0x10000, 0x11000, ROM_BASE
        dev.set_queue_ready(0, True)
        assert not q.ready
        assert dev.error is not None and "read-only" in dev.error
        dev.detach()


def test_load_firmware_while_a_vmap_views_the_ram_it_punches() -> None:
    xi.Machine(memory=1 << 20).close()
    fds = open_fds()
    with xi.Machine(memory=2 << 20) as m:
        intf = xi.bind(m)
        ram = intf.vmap(0x10000, 16)  # views the region that the alias below 1 MiB splits
        m.load_firmware(b"\xa5" * ROM_SIZE)
        ram.addr[:4] = b"seen"  # the old mapping and the guest's share the memfd's pages
        assert intf.copy_from(0x10000, 4) == b"seen"
        assert intf.copy_from(0xE0000, 4) == b"\xa5" * 4
    assert open_fds() == fds  # the retired mapping was unmapped at close


# --- 10. bad API input is XInterfaceError ------------------------------------------------------


@pytest.fixture
def intf() -> Iterator[xi.XInterface]:
    with xi.Machine(memory=1 << 20) as m:
        yield xi.bind(m)


@pytest.mark.parametrize("data", ["text", None, 5, [1, 2], 3.5])
def test_copy_to_non_bytes_is_einval(intf: xi.XInterface, data: Any) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        intf.copy_to(0x1000, data)
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, "data")


@pytest.mark.parametrize("elements", [None, 5, "ab", b"ab"])
def test_sgmap_non_sequence_is_einval(intf: xi.XInterface, elements: Any) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        intf.sgmap(elements)
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, "elements")


@pytest.mark.parametrize(("name", "bad"), [("read", 5), ("write", "x")])
def test_iorange_non_callable_is_einval(intf: xi.XInterface, name: str, bad: object) -> None:
    published = len(intf.vm.pio_bus)  # the debug ports
    with pytest.raises(xi.XInterfaceError) as info:
        intf.iorange(0x600, 4, PIO, **{name: bad})  # type: ignore[arg-type]
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, name)
    assert len(intf.vm.pio_bus) == published


@pytest.mark.parametrize("delivery", [SYNC, POSTED, EVENTFD])
def test_mmio_event_ending_at_2_64_is_einval_in_every_mode(intf: xi.XInterface,
                                                           delivery: xi.Delivery) -> None:
    # The seed refuses addr + len < addr in 64-bit arithmetic, so [2**64 - 8, 2**64) wraps;
    # the kernel's ioeventfd refuses it the same way.
    with pytest.raises(xi.XInterfaceError) as info:
        intf.ioevent(2**64 - 8, 8, delivery=delivery)
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, "addr")
    intf.ioevent(2**64 - 16, 8, delivery=delivery).deassign()


@pytest.mark.parametrize("memory", [[(0, 4096.7)], [(0.0, 4096)], "64M", [(0,)], [(0, 4096, 1)],
                                    [None], 4096.0])
def test_memory_layout_must_be_ints(memory: Any) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        xi.Machine(memory=memory)
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, "memory")


@pytest.mark.parametrize("target", [2**31, 2**63, -1])
def test_bind_out_of_range_fd_is_ebadf(target: int) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        xi.bind(target)
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize(("call", "argument"), [
    (lambda m: m.load_flat(None), "image"),
    (lambda m: m.load_flat("text"), "image"),
    (lambda m: m.load_firmware(None), "firmware"),
    (lambda m: m.load_firmware(5), "firmware"),
    (lambda m: m.run(timeout="1"), "timeout"),
    (lambda m: m.run(timeout=-1), "timeout"),
    (lambda m: m.run(timeout=1, poll="x"), "poll"),
    (lambda m: m.run(timeout=1, poll=0), "poll"),
])
def test_machine_bad_arguments_are_einval(call: Callable[[xi.Machine], object],
                                          argument: str) -> None:
    with xi.Machine(memory=1 << 20) as m, pytest.raises(xi.XInterfaceError) as info:
        call(m)
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, argument)


def test_load_flat_real_or_protected_after_a_long_mode_run(guest: Assemble) -> None:
    out = io.BytesIO()
    with xi.Machine(memory=4 << 20, console=out) as m:
        for mode, bits in [("long", 64), ("real", 16), ("long", 64), ("protected", 32)]:
            m.load_flat(guest("hello", mode=mode, MODE=bits), mode=mode)
            assert m.run(timeout=10).reason == "hlt"
            sregs = m.vcpus[0].vcpu.get_sregs()
            assert bool(sregs.efer & 0x400) == (mode == "long")  # EFER.LMA: long mode active
    assert out.getvalue() == b"hi4hi1hi4hi2"


def test_refused_load_firmware_maps_nothing() -> None:
    # RAM where the ROM goes (just below 4 GiB): refused before anything is mapped, so the
    # same call gives the same error again (it used to leave the ROM mapped: EEXIST).
    layout = [(0, 1 << 20), ((1 << 32) - (64 << 10), 64 << 10)]
    with xi.Machine(memory=layout) as m:
        assert m.memory is not None
        before = [(r.gpa, r.size, r.readonly) for r in m.memory.regions]
        for _ in range(2):
            with pytest.raises(xi.XInterfaceError) as info:
                m.load_firmware(b"\0" * ROM_SIZE)
            assert (info.value.errno, info.value.argument) == (errno.EINVAL, "firmware")
        assert [(r.gpa, r.size, r.readonly) for r in m.memory.regions] == before
    # The layout of issue 11, RAM ending inside the alias: the alias takes its place.
    with xi.Machine(memory=[(0, 0xF8000), (0x100000, 0x100000)]) as m:
        m.load_firmware(b"\xa5" * ROM_SIZE)
        assert xi.bind(m).copy_from(0xE0000, 4) == b"\xa5" * 4


# --- Also: SIGINT after the guest halted -------------------------------------------------------


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


# --- Also: a runtime whose fcntl.ioctl retries EINTR (CPython 3.14) -----------------------------


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
