"""What firmware needs of the machine before it is worth starting."""

from __future__ import annotations

# SeaBIOS keeps its data in the PC's conventional memory: the EBDA just below 640 KiB (its e820
# always lists 0-0x9fc00 as RAM) and its init code, relocated to the top of RAM below 1 MiB.
# Measured with Debian's bios-microvm.bin 1.16.2: 544 KiB stops at "No space for init
# relocation." and spins until the timeout; 576 KiB reaches the boot attempt with its EBDA on
# no memory at all; from 640 KiB up everything it uses is RAM.
MIN_FIRMWARE_RAM = 640 << 10
