"""Snapshot and restore: a paused machine written to a directory, and built again from it.

:func:`snapshot` (:mod:`.save`) writes a manifest (:mod:`.format`) and one file per memory
region (:mod:`.memory_files`); :func:`restore` (:mod:`.restore`) builds the same machine and
maps the memory files back copy-on-write, so a restore costs the same for any RAM size and
any number of clones can run from one snapshot. A machine built from a description
(:mod:`xinterface.build`) records it, and :func:`restore_built` (:mod:`.built`) builds it
again from that. docs/snapshot.md says what is saved.
"""

from .built import restore_built
from .format import FORMAT_VERSION, SnapshotError
from .restore import restore
from .save import snapshot

__all__ = ["FORMAT_VERSION", "SnapshotError", "restore", "restore_built", "snapshot"]
