"""Device models. Each is an xinterface client: it registers on the buses through the
xinterface in one method and unregisters in another; nothing else touches it."""

from __future__ import annotations

from .output import Output, Until

__all__ = ["Output", "Until"]
