"""virtio-console (virtio 1.2 §5.3) with one port: a console for a guest that has a driver
(Linux's ``hvc0``), to an :class:`~xinterface.devices.output.Output` and from the host.

Queues: receiveq (0, host to guest) and transmitq (1, guest to host) of port 0; no
VIRTIO_CONSOLE_F_MULTIPORT, so no control queues. VIRTIO_CONSOLE_F_EMERG_WRITE is offered:
a byte the driver writes to ``emerg_write`` in the configuration space goes out at once,
even before the queues exist (§5.3.4). Input given with :meth:`VirtioConsole.feed` waits
(up to ``input_limit`` bytes; beyond that it is dropped and counted) until the driver
offers receive buffers.

With the compiled data path (``accel.dataplane``) the chains are read and filled in C; the
output and the input buffer stay here.
"""

from __future__ import annotations

import struct
import threading
from collections import deque

from .. import accel
from ..devices.output import Output
from ..devices.persist import State, field_bytes
from .device import VirtioDevice
from .queue import VirtQueue

VIRTIO_ID_CONSOLE = 3          # §5 Device Types
RX_QUEUE, TX_QUEUE = 0, 1      # §5.3.2 receiveq(port0), transmitq(port0)
VIRTIO_CONSOLE_F_SIZE = 0      # §5.3.3
VIRTIO_CONSOLE_F_EMERG_WRITE = 2
# §5.3.4 struct virtio_console_config { le16 cols; le16 rows; le32 max_nr_ports;
# le32 emerg_write; }
CONFIG = struct.Struct("<HHII")
EMERG_WRITE = 8
INPUT_LIMIT = 64 << 10
# The most transmitted bytes the compiled path gathers in one call; a chain that would go
# past it is left to the Python path.
GATHER_LIMIT = 1 << 20


class VirtioConsole(VirtioDevice):
    """``VirtioConsole(out)``: the guest's output goes to ``out.write`` (flushed per
    request); :meth:`feed` queues input for the guest, from any thread."""

    device_id = VIRTIO_ID_CONSOLE

    def __init__(self, out: Output | None = None, *, queue_size: int = 64,
                 input_limit: int = INPUT_LIMIT, iothread: bool = False) -> None:
        super().__init__(queue_sizes=(queue_size, queue_size),
                         features=1 << VIRTIO_CONSOLE_F_EMERG_WRITE,
                         config=CONFIG.pack(0, 0, 1, 0), iothread=iothread)
        self.out = out
        self.input_limit = input_limit
        self._input: deque[bytes] = deque()
        self._input_len = 0
        self._input_lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        """Bytes typed for the guest, in order; delivered once it has receive buffers."""
        with self._input_lock:
            room = self.input_limit - self._input_len
            if len(data) > room:
                self.stats["input_dropped"] += len(data) - max(room, 0)
                data = data[:max(room, 0)]
            if data:
                self._input.append(bytes(data))
                self._input_len += len(data)
        self.process(self.queues[RX_QUEUE])

    def save(self) -> State:
        """The device's state and the typed bytes the guest has not taken yet."""
        with self._input_lock:
            pending = b"".join(self._input)
        return {**self.save_state(), "input": pending.hex()}

    def load(self, state: State) -> None:
        pending = field_bytes(state, "input", limit=self.input_limit)
        self.load_state(state)
        with self._input_lock:
            self._input.clear()
            if pending:
                self._input.append(pending)
            self._input_len = len(pending)

    def handle(self, queue: VirtQueue) -> None:
        if queue.index == TX_QUEUE:
            self._transmit(queue)
        else:
            self._receive(queue)

    def _transmit(self, queue: VirtQueue) -> None:
        out = self.out
        wrote = False
        fast = accel.dataplane
        while True:
            regions = queue.compiled_regions() if fast is not None else None
            if fast is not None and regions is not None:
                code, _, data = fast.gather(queue, regions, GATHER_LIMIT, not queue.batching)
                self.stats["tx_bytes"] += len(data)
                if out is not None and data:
                    out.write(data)
                    wrote = True
                if code == fast.EMPTY:
                    break
            # A chain the compiled path left (or there is none): served here.
            chain = queue.pop()
            if chain is None:
                break
            data = chain.read()
            self.stats["tx_bytes"] += len(data)
            if out is not None and data:
                out.write(data)
                wrote = True
            queue.add_used(chain, 0)
        if wrote and out is not None:
            out.flush()

    def _receive(self, queue: VirtQueue) -> None:
        fast = accel.dataplane
        while True:
            with self._input_lock:
                if not self._input:
                    return
            regions = queue.compiled_regions() if fast is not None else None
            if fast is not None and regions is not None:
                with self._input_lock:
                    pending = b"".join(self._input)
                    code, chains, n, _ = fast.fill(queue, regions, pending, not queue.batching)
                    if chains:
                        self._take_input(pending, n)
                if chains:
                    self.stats["rx_bytes"] += n
                    continue
                if code == fast.EMPTY:
                    return
            # A chain the compiled path left (or there is none): served here.
            chain = queue.pop()
            if chain is None:
                return
            with self._input_lock:
                pending = b"".join(self._input)
                n = chain.write(pending)
                self._take_input(pending, n)
            self.stats["rx_bytes"] += n
            queue.add_used(chain, n)

    def _take_input(self, pending: bytes, n: int) -> None:
        """``n`` bytes of ``pending`` (the whole input, joined) went to the guest; under
        ``_input_lock``."""
        rest = pending[n:]
        self._input.clear()
        if rest:
            self._input.append(rest)
        self._input_len = len(rest)

    def config_write(self, offset: int, data: bytes) -> None:
        if offset == EMERG_WRITE:
            # §5.3.4: the low byte of emerg_write is a character for the console; a driver
            # may use it without setting up the queues or even acknowledging the feature.
            if self.out is not None:
                self.out.write(data[:1])
                self.out.flush()
            self.stats["emerg_bytes"] += 1
            return
        self.stats["config_write_dropped"] += 1
