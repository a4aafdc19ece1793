"""A GDB remote serial protocol stub on ``KVM_SET_GUEST_DEBUG`` (docs/gdb.md).

:mod:`.packets` frames packets, :mod:`.target` describes the registers GDB sees,
:mod:`.stub` answers the commands and takes the vCPUs' debug stops, :mod:`.server` listens.
"""
