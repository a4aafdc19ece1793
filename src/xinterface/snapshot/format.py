"""The snapshot directory: ``manifest.json`` and the memory files it names.

The manifest holds the format's name and version, the machine (memory layout, vCPUs,
irqchip), every vCPU's and the VM's KVM state (raw structures, base64), every device's
state, and per memory file its size and modification time. It carries a SHA-256 of its own
body, so an edited or truncated manifest is refused; a memory file is checked by size and
mtime only (reading it would make the restore grow with RAM). Each failure is one
:class:`SnapshotError` line and nothing runs.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
from typing import Any

from ..errors import XInterfaceError

FORMAT = "xinterface-snapshot"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class SnapshotError(XInterfaceError):
    """A snapshot that cannot be written or restored; the message is one line."""


def fail(code: int, message: str, value: object = None) -> SnapshotError:
    return SnapshotError(code, message, argument="snapshot", value=value)


def encode(blobs: dict[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in blobs.items()}


def decode(texts: object, what: str) -> dict[str, bytes]:
    if not isinstance(texts, dict):
        raise fail(errno.EINVAL, f"manifest: {what} is not a table", what)
    try:
        return {str(k): base64.b64decode(v, validate=True) for k, v in texts.items()}
    except (ValueError, TypeError):
        raise fail(errno.EINVAL, f"manifest: {what} holds a value that is not base64",
                   what) from None


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(directory: str, body: dict[str, Any]) -> None:
    """Write the manifest last, through a rename: a snapshot cut short has none."""
    body = {"format": FORMAT, "version": FORMAT_VERSION, **body}
    text = json.dumps({"sha256": _digest(body), "body": body}, sort_keys=True)
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, os.path.join(directory, MANIFEST))


def read_manifest(directory: str) -> dict[str, Any]:
    """The manifest's body, checked: the format, its version and its digest."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise fail(exc.errno or errno.EIO, f"snapshot {directory}: cannot read {MANIFEST}: "
                   f"{exc.strerror}", directory) from None
    try:
        outer = json.loads(raw)
    except ValueError:
        raise fail(errno.EINVAL, f"snapshot {directory}: {MANIFEST} is not JSON (truncated?)",
                   directory) from None
    if not isinstance(outer, dict) or not isinstance(outer.get("body"), dict):
        raise fail(errno.EINVAL, f"snapshot {directory}: {MANIFEST} is not a snapshot manifest",
                   directory)
    body: dict[str, Any] = outer["body"]
    if body.get("format") != FORMAT:
        raise fail(errno.EINVAL, f"snapshot {directory}: not an {FORMAT}", directory)
    if body.get("version") != FORMAT_VERSION:
        raise fail(errno.EPROTO, f"snapshot {directory}: format version "
                   f"{body.get('version')!r}, this xinterface reads version {FORMAT_VERSION}",
                   directory)
    if outer.get("sha256") != _digest(body):
        raise fail(errno.EBADMSG, f"snapshot {directory}: {MANIFEST} was edited (its SHA-256 "
                   "does not match)", directory)
    return body
