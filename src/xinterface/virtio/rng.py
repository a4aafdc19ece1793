"""virtio-rng, the entropy device (virtio 1.2 §5.4): random bytes from ``os.urandom``, or
from getrandom(2) in the compiled data path (``accel.dataplane``), the same kernel source."""

from __future__ import annotations

import os

from .. import accel
from ..devices.persist import State
from .device import VirtioDevice
from .queue import VirtQueue

VIRTIO_ID_RNG = 4           # §5 Device Types
MAX_REQUEST = 64 << 10      # §5.4.6.2: the device "MAY use less than the entire buffer length"


class VirtioRng(VirtioDevice):
    """One queue (requestq); each request's device-writable buffers get random bytes, up to
    ``max_request`` of them. Device-readable buffers (which a driver must not send) are
    ignored. ``VirtioRng(queue_size=256, max_request=65536, iothread=False)``."""

    device_id = VIRTIO_ID_RNG

    def __init__(self, *, queue_size: int = 256, max_request: int = MAX_REQUEST,
                 iothread: bool = False) -> None:
        super().__init__(queue_sizes=(queue_size,), iothread=iothread)
        self.max_request = max_request
        self.bytes_served = 0

    def save(self) -> State:
        return self.save_state()

    def load(self, state: State) -> None:
        self.load_state(state)

    def handle(self, queue: VirtQueue) -> None:
        fast = accel.dataplane
        while True:
            regions = queue.compiled_regions() if fast is not None else None
            if fast is not None and regions is not None:
                code, _, served, _ = fast.rng(queue, regions, self.max_request,
                                              not queue.batching)
                self.bytes_served += served
                if code == fast.EMPTY:
                    return
            # A chain the compiled path left (or there is none): served here.
            chain = queue.pop()
            if chain is None:
                return
            left = self.max_request
            done = 0
            for view in chain.writable:
                n = min(view.nbytes, left - done)
                if n <= 0:
                    break
                view[:n] = os.urandom(n)
                done += n
            self.bytes_served += done
            queue.add_used(chain, done)
