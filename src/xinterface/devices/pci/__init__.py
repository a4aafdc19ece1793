"""PCI: configuration space (headers, later BARs and capabilities) and the host bridge."""

from .config import config_header
from .host import PciHost

__all__ = ["PciHost", "config_header"]
