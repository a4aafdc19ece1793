"""What runs vCPUs: the Machine (run states, threads), the exit loop, the emulation of what
KVM's emulator lacks, and the tracing bus wrapper."""
