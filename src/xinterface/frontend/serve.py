"""``xinterface serve``: one virtio device as a vhost-user backend program, following the
vhost-user spec's "Backend program conventions": ``--socket-path PATH`` or ``--fd N``,
``--print-capabilities``, no daemonizing, exit 0 on SIGTERM and SIGINT, one line on stderr
per error. A frontend that disconnects (or is killed) leaves the device reset and the
backend waiting for the next one.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..virtio.device import VirtioDevice

# The spec's capability names: the device type, and the options of that type understood.
CAPABILITIES = {
    "blk": {"type": "block", "features": ["read-only", "blk-file"]},
    "net": {"type": "net", "features": []},
    "rng": {"type": "rng", "features": []},
    "console": {"type": "console", "features": []},
}


def _fail(message: object) -> None:
    click.echo(f"xinterface serve: {message}", err=True)
    sys.exit(1)


def serve_device(make: Callable[[], VirtioDevice], socket_path: Path | None,
                 fd: int | None) -> None:
    """Build the device, listen, serve frontends until SIGTERM/SIGINT; exit 0 then."""
    from ..vhost_user import Server, adopt, listen

    if (socket_path is None) == (fd is None):
        _fail("give one of --socket-path and --fd")
    try:
        device = make()
        sock = adopt(fd) if fd is not None else listen(socket_path or "")
    except OSError as exc:
        _fail(exc)
    server = Server(device, sock)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        server.close()
        close = getattr(device, "close", None)
        if callable(close):
            close()
        if socket_path is not None:
            socket_path.unlink(missing_ok=True)
    sys.exit(0)


def _common(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--socket-path, --fd and --print-capabilities, for each device type."""

    def capabilities(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            click.echo(json.dumps(CAPABILITIES[kind]))
            ctx.exit(0)

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--print-capabilities", is_flag=True, expose_value=False,
                         is_eager=True, callback=capabilities,
                         help="Print the backend's capabilities (JSON) and exit.")(f)
        f = click.option("--fd", type=click.IntRange(min=0), default=None,
                         help="Serve on this inherited socket (listening, or connected: one "
                              "frontend).")(f)
        f = click.option("--socket-path", type=click.Path(dir_okay=False, path_type=Path),
                         default=None, help="Listen on this UNIX socket path.")(f)
        return f

    return wrap


@click.group()
def serve() -> None:
    """Serve a virtio device to a vhost-user frontend (QEMU), one frontend at a time."""


@serve.command()
@_common("blk")
@click.argument("image", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--blk-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The raw image (the spec's name for IMAGE).")
@click.option("--readonly", "--read-only", "readonly", is_flag=True,
              help="Offer VIRTIO_BLK_F_RO; writes fail.")
@click.option("--serial", default=None, help="The disk's ID string (GET_ID, at most 20 bytes).")
def blk(socket_path: Path | None, fd: int | None, image: Path | None, blk_file: Path | None,
        readonly: bool, serial: str | None) -> None:
    """virtio-blk on the raw IMAGE."""
    from ..virtio.blk import VirtioBlk

    path = image or blk_file
    if path is None or (image and blk_file):
        _fail("give the image once: IMAGE or --blk-file")
    assert path is not None
    serve_device(lambda: VirtioBlk(path, readonly=readonly, serial=serial), socket_path, fd)


@serve.command()
@_common("net")
@click.option("--tap", required=True, help="The TAP interface frames go to and come from.")
def net(socket_path: Path | None, fd: int | None, tap: str) -> None:
    """virtio-net on a TAP interface."""
    from ..virtio.net import TapBackend, VirtioNet

    serve_device(lambda: VirtioNet(TapBackend(tap)), socket_path, fd)


@serve.command()
@_common("rng")
def rng(socket_path: Path | None, fd: int | None) -> None:
    """virtio-rng: random bytes from the host."""
    from ..virtio.rng import VirtioRng

    serve_device(VirtioRng, socket_path, fd)


@serve.command()
@_common("console")
def console(socket_path: Path | None, fd: int | None) -> None:
    """virtio-console: the guest's output on stdout."""
    from ..virtio.console import VirtioConsole

    serve_device(lambda: VirtioConsole(sys.stdout.buffer), socket_path, fd)
