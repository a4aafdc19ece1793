# The compiled virtio data path (_dataplane.c); see xinterface.accel and xinterface.virtio.queue.
from typing import Any

EMPTY: int
PYTHON: int
HELD: int
NO_BUFFERS: int
BATCH: int

def blk(queue: Any, regions: list[Any], fd: int, capacity: int, readonly: bool,
        publish: bool) -> tuple[int, int, int, int]: ...
def net_tx(queue: Any, regions: list[Any], fd: int, hdr_len: int,
           publish: bool) -> tuple[int, int, int, int]: ...
def net_rx(queue: Any, regions: list[Any], fd: int, frame: bytearray, hdr_len: int,
           mergeable: bool, max_used: int) -> tuple[int, int, int, int]: ...
def rng(queue: Any, regions: list[Any], max_request: int,
        publish: bool) -> tuple[int, int, int, int]: ...
def gather(queue: Any, regions: list[Any], limit: int,
           publish: bool) -> tuple[int, int, bytes]: ...
def fill(queue: Any, regions: list[Any], data: bytes | bytearray | memoryview,
         publish: bool) -> tuple[int, int, int, int]: ...
