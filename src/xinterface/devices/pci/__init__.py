"""PCI: configuration space (headers, BARs, capabilities) and the i440FX/PIIX3 host."""

from .config import config_header
from .function import Bar, PciFunction
from .host import PciHost

__all__ = ["Bar", "PciFunction", "PciHost", "config_header"]
