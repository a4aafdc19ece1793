"""QMP's snapshot commands. QEMU's ``snapshot-save``/``snapshot-load``/``snapshot-delete``
are jobs over a tag kept inside block devices (``job-id``, ``tag``, ``vmstate``,
``devices``); here a snapshot is a directory (docs/snapshot.md), so the commands take its
``path`` and are ``x-``-prefixed, as QMP names commands outside QEMU's schema. Each is done
when it replies (no job); a running guest is paused for it and resumed after (``STOP``,
``RESUME``), as QEMU's ``savevm``/``loadvm`` stop the VM around them.

- ``x-snapshot-save {"path": DIR, "diff": false}``: the machine to DIR (created; it must not
  hold a snapshot); ``diff``: only the pages changed since its last snapshot.
- ``x-snapshot-load {"path": DIR}``: DIR's state into this machine, in place (it must be of
  the same shape); it goes on from the saved instruction.
- ``x-snapshot-delete {"path": DIR}``: remove the snapshot's own files (its manifest and the
  memory files it names) and DIR if that leaves it empty; anything else in DIR stays.

Every failure is QMP's ``GenericError`` with the snapshot's one line.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from .commands import QmpError, register
from .controls import Controls


def _path(arguments: dict[str, Any]) -> str:
    path = arguments["path"]
    if not isinstance(path, str) or not path:
        raise QmpError("Invalid parameter type for 'path', expected: string")
    return path


def save(controls: Controls, arguments: dict[str, Any]) -> dict[str, Any]:
    from ..snapshot import snapshot

    path = _path(arguments)
    diff = arguments.get("diff", False)
    if not isinstance(diff, bool):
        raise QmpError("Invalid parameter type for 'diff', expected: boolean")
    with controls.stopped():
        snapshot(controls.machine, path, diff=diff)
    return {}


def load(controls: Controls, arguments: dict[str, Any]) -> dict[str, Any]:
    from ..snapshot.load import load as load_into

    path = _path(arguments)
    with controls.stopped():
        load_into(controls.machine, path)
    return {}


def delete(controls: Controls, arguments: dict[str, Any]) -> dict[str, Any]:
    from ..snapshot.format import MANIFEST, read_manifest

    directory = os.path.abspath(_path(arguments))
    body = read_manifest(directory)   # refuses what is not a snapshot: nothing removed
    names = [entry.get("file") for entry in body.get("memory", []) if isinstance(entry, dict)]
    files = [n for n in names if isinstance(n, str) and n and os.path.basename(n) == n]
    # The manifest first: a deletion cut short leaves no snapshot that looks whole.
    for name in [MANIFEST, *files]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
    with contextlib.suppress(OSError):
        os.rmdir(directory)   # only if empty
    return {}


register("x-snapshot-save", save, required=("path",), optional=("diff",))
register("x-snapshot-load", load, required=("path",))
register("x-snapshot-delete", delete, required=("path",))
