"""``--snapshot-on TEXT --snapshot DIR [--continue]``: when TEXT appears on a console, pause
the machine, write it to DIR, then end the run (status 0) or let it go on.

The console's bytes are written by the vCPU that executed the ``out`` (or by whoever drains
the POSTED ring). That thread cannot wait for a pause (it would wait for itself), so the
watcher only *begins* one (``Machine.request_pause``): the vCPU parks before its next
``KVM_RUN``, with nothing executed past the instruction that completed TEXT. A helper thread
completes the pause, writes the snapshot, and resumes or stops the run. A failure of the
snapshot ends the run with it as the run's error (one line on the command line).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

from ..devices.output import Output, Until
from .report import EXIT_TIMEOUT, fail

if TYPE_CHECKING:
    from ..runner.machine import Machine, RunResult
    from .session import Session

MANIFEST = "manifest.json"


def check_options(text: str | None, directory: str | None, continue_run: bool) -> str | None:
    """What is wrong with the combination, as the user's words, or None."""
    if (text is None) != (directory is None):
        return "--snapshot-on TEXT and --snapshot DIR go together"
    if continue_run and text is None:
        return "--continue needs --snapshot-on TEXT and --snapshot DIR"
    if text == "":
        return "--snapshot-on needs some text to wait for"
    if directory is not None and os.path.exists(os.path.join(directory, MANIFEST)):
        return f"--snapshot {directory} holds a snapshot already"
    return None


def check_devices(machine: Machine) -> None:
    """Refuse before the run a machine that cannot be snapshotted (``EOPNOTSUPP`` naming the
    device), rather than after it ran up to TEXT."""
    from ..snapshot.devices import devices

    devices(machine)


class SnapshotOn:
    """Watches outputs for ``text``; on the first match snapshots ``machine`` to
    ``directory``, then resumes it (``continue_run``) or stops it.

    ``watch(out)`` wraps an output; :meth:`run` runs the session with the helper around
    it, :meth:`end` gives the command's verdict after it. ``taken`` tells whether the
    snapshot was written.
    """

    def __init__(self, machine: Machine, text: str, directory: str, continue_run: bool) -> None:
        self.machine = machine
        self.text = text.encode()
        self.directory = directory
        self.continue_run = continue_run
        self.taken = False
        self._matched = threading.Event()
        self._closing = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, out: Output) -> Output:
        return Until(out, self.text, self._on_match)

    def _on_match(self) -> None:
        with self._lock:
            if self._matched.is_set():
                return   # TEXT on a second console: one snapshot
            self._matched.set()
        self.machine.request_pause()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._take, name="xinterface-snapshot-on",
                                        daemon=True)
        self._thread.start()

    def _take(self) -> None:
        from ..snapshot import snapshot

        self._matched.wait()
        if self._closing:
            return
        machine = self.machine
        if not machine.pause():
            return   # the run ended before the pause came (a debug exit on another vCPU)
        try:
            snapshot(machine, self.directory)
        except BaseException as exc:
            machine.request_stop("error", None, exc)
            return
        self.taken = True
        if self.continue_run:
            machine.resume()
        else:
            machine.stop()

    def close(self) -> None:
        self._closing = True
        self._matched.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def run(self, session: Session, timeout: float | None) -> RunResult:
        """``session.run(timeout)`` with the helper around it: the devices checked first
        (refused before the run rather than after it ran up to TEXT), the helper started,
        and joined however the run ends."""
        check_devices(self.machine)
        self.start()
        try:
            return session.run(timeout)
        finally:
            self.close()

    def end(self, what: str, result: RunResult) -> None:
        """After the run: one line (status 124 for a timeout, else 1) if TEXT never came;
        status 0 once the snapshot was written, unless ``--continue`` ran on."""
        if not self.taken:
            fail(f"{what} ended ({result.reason}) before {self.text.decode()!r} appeared: no "
                 "snapshot was written",
                 status=EXIT_TIMEOUT if result.reason == "timeout" else 1)
        if not self.continue_run:
            sys.exit(0)
