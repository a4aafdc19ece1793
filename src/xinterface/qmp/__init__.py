"""QMP, the QEMU Machine Protocol, so QEMU's own tools drive an xinterface machine:
:class:`.server.QmpServer` on a UNIX socket over :class:`.controls.Controls` (run control
mapped onto the run state machine), the command table (:mod:`.commands`, with its
``register`` seam), the human monitor (:mod:`.hmp`). Import what you use from its module:
the package itself imports nothing, so a machine without a monitor never loads the server.
"""
