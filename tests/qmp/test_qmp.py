"""``xinterface run --qmp``, driven by QEMU's own client library (``qemu.qmp``): a real
process, a real guest, a client nobody here wrote."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_kvm

qmp = pytest.importorskip("qemu.qmp")
pytestmark = needs_kvm

GUESTS = Path(__file__).resolve().parents[1] / "guests"
DEADLINE = 60.0


class Vmm:
    """``xinterface run count_in_rax.S --qmp unix:PATH`` in the background."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.path = str(tmp / "qmp.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xinterface", "run", str(GUESTS / "count_in_rax.S"),
             "--qmp", f"unix:{self.path}", "--timeout", "120", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        end = time.monotonic() + DEADLINE
        while not os.path.exists(self.path):
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < end, "no QMP socket"
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture(scope="module")
def vmm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vmm]:
    vmm = Vmm(tmp_path_factory.mktemp("qmp"))
    yield vmm
    vmm.close()


def session(path: str, *steps: Any, ends: bool = False) -> Any:
    """Connect a ``QMPClient``, run ``steps(client)`` (coroutine functions), disconnect.
    ``ends``: the steps end the VMM, which hangs up (the client's disconnect then reports
    the EOF it saw, as it does with QEMU after ``quit``)."""

    async def main() -> Any:
        client = qmp.QMPClient("test")
        await asyncio.wait_for(client.connect(path), DEADLINE)
        try:
            return [await asyncio.wait_for(step(client), DEADLINE) for step in steps]
        finally:
            try:
                await client.disconnect()
            except EOFError:
                if not ends:
                    raise

    return asyncio.run(main())


def rax(text: str) -> int:
    match = re.search(r"RAX=([0-9a-f]{16})", text)
    assert match, text
    return int(match.group(1), 16)


def hmp(line: str) -> Any:
    async def step(client: Any) -> Any:
        return await client.execute("human-monitor-command", {"command-line": line})
    return step


def execute(name: str, args: dict[str, Any] | None = None) -> Any:
    async def step(client: Any) -> Any:
        return await client.execute(name, args)
    return step


def test_greeting_version_and_status(vmm: Vmm) -> None:
    async def greeting(client: Any) -> Any:
        return client.greeting

    hello, version, status = session(vmm.path, greeting, execute("query-version"),
                                     execute("query-status"))
    assert hello.QMP.version["package"].startswith("xinterface")
    assert set(version["qemu"]) == {"major", "minor", "micro"}
    assert status == {"status": "running", "running": True, "singlestep": False}


def test_stop_holds_the_guest_and_cont_lets_it_go(vmm: Vmm) -> None:
    async def pause_and_look(client: Any) -> Any:
        with client.listener() as listener:
            await client.execute("stop")
            stop = await listener.get()
            status = await client.execute("query-status")
            first = await client.execute("human-monitor-command",
                                         {"command-line": "info registers"})
            await asyncio.sleep(0.2)
            second = await client.execute("human-monitor-command",
                                          {"command-line": "info registers"})
            await client.execute("cont")
            resume = await listener.get()
            await asyncio.sleep(0.2)
            third = await client.execute("human-monitor-command",
                                         {"command-line": "info registers"})
            return stop, status, first, second, resume, third

    ((stop, status, first, second, resume, third),) = session(vmm.path, pause_and_look)
    assert stop["event"] == "STOP" and resume["event"] == "RESUME"
    assert status["status"] == "paused" and status["running"] is False
    assert "RIP=" in first and "CR0=" in first
    assert rax(first) == rax(second)       # paused: the guest's count holds still
    assert rax(third) != rax(second)       # resumed: it counts again


def test_query_cpus_fast_names_the_vcpu_threads(vmm: Vmm) -> None:
    (cpus,) = session(vmm.path, execute("query-cpus-fast"))
    assert [c["cpu-index"] for c in cpus] == [0]
    tid = cpus[0]["thread-id"]
    assert tid != vmm.proc.pid

    def cpu_ticks() -> int:  # utime + stime of that thread (proc(5))
        fields = Path(f"/proc/{vmm.proc.pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1]
        return sum(map(int, fields.split()[11:13]))

    before = cpu_ticks()
    time.sleep(0.5)
    assert cpu_ticks() > before   # the thread that spins is the vCPU running the guest


def test_info_xioevents_lists_the_debug_ports(vmm: Vmm) -> None:
    (text,) = session(vmm.path, hmp("info xioevents"))
    assert re.search(r"^pio\s+0x000000f4 len \d+ range", text, re.M), text
    assert re.search(r"^pio\s+0x000000e9 len 1 range", text, re.M), text
    (unknown,) = session(vmm.path, hmp("info nothing"))
    assert "one of" in unknown


def test_unknown_commands_and_bad_arguments_get_qmp_errors(vmm: Vmm) -> None:
    with pytest.raises(qmp.ExecuteError) as info:
        session(vmm.path, execute("no-such-command"))
    assert info.value.error_class == "CommandNotFound"
    with pytest.raises(qmp.ExecuteError) as info:
        session(vmm.path, execute("query-status", {"bogus": 1}))
    assert info.value.error_class == "GenericError"
    assert "bogus" in info.value.received["error"]["desc"]
    with pytest.raises(qmp.ExecuteError) as info:
        session(vmm.path, execute("human-monitor-command", {"command-line": 5}))
    assert "string" in info.value.received["error"]["desc"]


class Raw:
    """A client speaking bytes, to send what a library never would."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)   # blocking: a full backlog waits instead of EAGAIN
        self.sock.settimeout(DEADLINE)
        self.file = self.sock.makefile("rb")

    def message(self) -> dict[str, Any]:
        line = self.file.readline()
        assert line, "the server closed the connection"
        value: dict[str, Any] = json.loads(line)
        return value

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_malformed_json_gets_an_error_and_the_connection_goes_on(vmm: Vmm) -> None:
    raw = Raw(vmm.path)
    try:
        assert "QMP" in raw.message()
        raw.send(b'{"execute": "query-status"}')
        assert raw.message()["error"]["class"] == "CommandNotFound"  # not negotiated yet
        raw.send(b'{"execute": "qmp_capabilities", "id": 1}')
        assert raw.message() == {"return": {}, "id": 1}
        raw.send(b'{"execute": "query-status", "id": "x", }')
        reply = raw.message()
        assert reply["error"]["class"] == "GenericError"
        assert "JSON parse error" in reply["error"]["desc"]
        raw.send(b'[1, 2]\n{"id": 3}')
        assert "object" in raw.message()["error"]["desc"]
        assert "execute" in raw.message()["error"]["desc"]
        raw.send(b'{"execute": "query-status", "id": 4}')
        reply = raw.message()
        assert reply["id"] == 4 and reply["return"]["status"] == "running"
    finally:
        raw.close()


def test_flooding_and_dying_clients_never_disturb_the_guest(vmm: Vmm) -> None:
    (before,) = session(vmm.path, hmp("info registers"))
    # One floods commands and never reads a reply, then dies.
    flood = Raw(vmm.path)
    flood.send(b'{"execute": "qmp_capabilities"}')
    with pytest.raises(OSError):  # the server drops it once its unread replies pile up
        for _ in range(20000):
            flood.send(b'{"execute": "query-status"}' * 10)
    flood.close()
    # One sends a message without end, past the size bound.
    endless = Raw(vmm.path)
    endless.message()
    with pytest.raises(OSError):
        for _ in range(64):
            endless.send(b'{"execute": "' + b"a" * 65536)
        endless.message()
        endless.message()
    endless.close()
    # Several connect and vanish mid-message.
    for _ in range(20):
        gone = Raw(vmm.path)
        gone.send(b'{"execute": "qmp_cap')
        gone.close()
    (after, status) = session(vmm.path, hmp("info registers"), execute("query-status"))
    assert rax(after) != rax(before)
    assert status["status"] == "running"
    assert vmm.proc.poll() is None


def test_quit_sends_shutdown_and_the_vmm_exits_0(vmm: Vmm) -> None:
    """Last in the module: it ends the shared process."""

    async def quit(client: Any) -> Any:
        with client.listener() as listener:
            await client.execute("quit")
            return await listener.get()

    (event,) = session(vmm.path, quit, ends=True)
    assert event["event"] == "SHUTDOWN"
    assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert vmm.proc.wait(DEADLINE) == 0
    assert not os.path.exists(vmm.path)


def test_system_reset_sends_reset_and_ends_the_run(tmp_path: Path) -> None:
    vmm = Vmm(tmp_path)
    try:
        async def reset(client: Any) -> Any:
            with client.listener() as listener:
                await client.execute("system_reset")
                return [await listener.get(), await listener.get()]

        ((reset_event, shutdown),) = session(vmm.path, reset, ends=True)
        assert reset_event["event"] == "RESET"
        assert reset_event["data"]["reason"] == "host-qmp-system-reset"
        assert shutdown["event"] == "SHUTDOWN"
        assert vmm.proc.wait(DEADLINE) == 0
    finally:
        vmm.close()


def test_clients_racing_stop_cont_and_registers(tmp_path: Path) -> None:
    """Four clients at once: stop, look, cont, look, while one more quits in the middle of
    it. Every reply comes, the last cont leaves the guest running, and the VMM exits 0."""
    import threading

    vmm = Vmm(tmp_path)
    errors: list[BaseException] = []

    def hammer() -> None:
        async def rounds(client: Any) -> None:
            for _ in range(10):
                await client.execute("stop")
                await client.execute("human-monitor-command",
                                     {"command-line": "info registers"})
                await client.execute("cont")
                await client.execute("query-cpus-fast")
        try:
            session(vmm.path, rounds)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        (status,) = session(vmm.path, execute("query-status"))
        assert status["status"] == "running"   # every stop had its cont

        # Now a quit while others keep stopping and continuing: they see the end as a
        # closed connection or an error reply, never a hang.
        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for thread in threads:
            thread.start()
        session(vmm.path, execute("quit"), ends=True)
        for thread in threads:
            thread.join(DEADLINE)
        assert not any(t.is_alive() for t in threads)
        assert vmm.proc.wait(DEADLINE) == 0
    finally:
        vmm.close()
