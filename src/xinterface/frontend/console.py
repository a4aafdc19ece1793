"""The interactive serial console: the terminal connected to a guest's UART both ways.

As QEMU's ``-serial stdio``: the terminal goes into raw mode (every key, Ctrl-C included,
goes to the guest), and Ctrl-A is the escape key (QEMU's default, ``-echr``): ``Ctrl-A x``
quits, ``Ctrl-A h`` prints the keys, ``Ctrl-A Ctrl-A`` sends one Ctrl-A, ``Ctrl-A c``
switches between the guest and the human monitor (QMP's ``human-monitor-command``). Output
post-processing (``OPOST``) stays on, as QEMU leaves it, so a bare ``\\n`` on the debug
console still returns the carriage. The terminal's attributes are restored on every way
out: the guest's end, an error, an exception, ``Ctrl-A x``, and SIGTERM or SIGHUP (which end
the run like Ctrl-C does, as :class:`Terminated`). A stdin that is not a terminal (a pipe) is
read as it is.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..devices import Output

ESCAPE = 0x01  # Ctrl-A
QUIT_KEY = ord("x")
MONITOR_KEY = ord("c")
PROMPT = b"(qemu) "
HELP_KEYS = (ord("h"), ord("?"))
HELP = (b"\r\n"
        b"C-a h    print this help\r\n"
        b"C-a x    quit xinterface\r\n"
        b"C-a c    switch between the guest and the monitor\r\n"
        b"C-a C-a  send C-a to the guest\r\n")
END_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_READ_SIZE = 4096


class Terminated(BaseException):
    """A signal ended the run (a BaseException, as KeyboardInterrupt: nothing swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


def raw_attributes(attrs: list[Any]) -> list[Any]:
    """``attrs`` (as ``termios.tcgetattr`` gives them) in raw mode, output processing kept."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
               | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


class SerialConsole:
    """Keys to ``feed`` (the UART's receive side), the UART's output to the terminal.

    It is the UART's output stream (``write``/``flush``); set ``feed`` before entering it.
    ``stop`` ends the run (``Machine.stop``) on ``Ctrl-A x``; ``quit_requested`` tells.
    ``monitor`` runs one human monitor command line and gives what it prints; without one,
    ``Ctrl-A c`` is dropped as any unknown key.
    """

    def __init__(self, stop: Callable[[], None], *, stdin: int = 0,
                 stdout: Output | None = None,
                 monitor: Callable[[str], str] | None = None) -> None:
        self.feed: Callable[[bytes], None] | None = None
        self.monitor = monitor
        self.in_monitor = False
        self._line = bytearray()
        self.quit_requested = False
        self._stop = stop
        self._stdin = stdin
        self._out = stdout if stdout is not None else sys.stdout.buffer
        self._out_lock = threading.Lock()
        self._escape = False
        self._saved: list[Any] | None = None
        self._handlers: dict[int, object] = {}
        self._wake: tuple[int, int] | None = None
        self._reader: threading.Thread | None = None
        self.error: BaseException | None = None
        self._closing = False
        self._pending_signal: int | None = None

    # --- the UART's output -------------------------------------------------------------------
    def write(self, data: bytes, /) -> int:
        with self._out_lock:
            self._out.write(data)
            self._out.flush()  # typed keys echo at once, not at the next newline
        return len(data)

    def flush(self) -> None:
        with self._out_lock:
            self._out.flush()

    # --- the keyboard ------------------------------------------------------------------------
    def keys(self, data: bytes) -> None:
        """Handle typed bytes: escapes here, the rest to the guest, in order."""
        guest = bytearray()
        for byte in data:
            if self.quit_requested:
                return
            if self._escape:
                self._escape = False
                if byte == QUIT_KEY:
                    self._send(guest)
                    self.quit_requested = True
                    self._stop()
                    return
                if byte == MONITOR_KEY and self.monitor is not None:
                    self._send(guest)
                    guest.clear()
                    self.in_monitor = not self.in_monitor
                    self._line.clear()
                    self.write(b"\r\n" + PROMPT if self.in_monitor else b"\r\n")
                elif byte in HELP_KEYS:
                    self._send(guest)
                    guest.clear()
                    self.write(HELP)
                elif byte == ESCAPE:
                    guest.append(ESCAPE)
                # Any other key after the escape is dropped, as QEMU's mux does.
            elif byte == ESCAPE:
                self._escape = True
            elif self.in_monitor:
                self._monitor_key(byte)
            else:
                guest.append(byte)
        self._send(guest)

    def _monitor_key(self, byte: int) -> None:
        """A key typed at the monitor: a line editor with echo, Enter runs the line."""
        assert self.monitor is not None
        if byte in (0x0D, 0x0A):
            line, self._line = self._line.decode(errors="replace"), bytearray()
            self.write(b"\r\n")
            self.write(self.monitor(line).encode(errors="replace") + PROMPT)
        elif byte in (0x7F, 0x08):
            if self._line:
                self._line.pop()
                self.write(b"\b \b")
        elif 0x20 <= byte < 0x7F:
            self._line.append(byte)
            self.write(bytes([byte]))

    def _send(self, data: bytearray) -> None:
        if data and self.feed is not None:
            self.feed(bytes(data))

    def _read_loop(self) -> None:
        assert self._wake is not None
        wake = self._wake[0]
        try:
            while not self.quit_requested:
                ready, _, _ = select.select([self._stdin, wake], [], [])
                if wake in ready:
                    return
                data = os.read(self._stdin, _READ_SIZE)
                if not data:
                    return  # end of a piped stdin: the guest runs on without input
                self.keys(data)
        except BaseException as exc:  # reported by the front end after the run
            self.error = exc

    # --- the terminal ------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._closing:
            self._pending_signal = signum  # raised once the terminal is given back
            return
        raise Terminated(signum)

    def __enter__(self) -> SerialConsole:
        try:
            for signum in END_SIGNALS:
                self._handlers[signum] = signal.signal(signum, self._on_signal)
            if os.isatty(self._stdin):
                self._saved = termios.tcgetattr(self._stdin)
                termios.tcsetattr(self._stdin, termios.TCSADRAIN, raw_attributes(self._saved))
            self._wake = os.pipe()
            self._reader = threading.Thread(target=self._read_loop, name="serial-console",
                                            daemon=True)
            self._reader.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop reading, give the terminal back as it was, restore the signal handlers."""
        self._closing = True
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"x")
            if self._reader is not None:
                self._reader.join()
            for fd in self._wake:
                os.close(fd)
            self._wake = self._reader = None
        if self._saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self._stdin, termios.TCSADRAIN, self._saved)
            self._saved = None
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._handlers = {}
        self._closing = False
        if self._pending_signal is not None:
            signum, self._pending_signal = self._pending_signal, None
            raise Terminated(signum)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
