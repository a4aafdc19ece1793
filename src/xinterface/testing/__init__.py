"""For people who test their own guests: an expect-style console (:class:`Console`), a
guest running in the background (:class:`Guest`), and the leak check the pytest plugin
(:mod:`xinterface.pytest_plugin`) runs around each machine."""

from .console import Console
from .guest import Guest
from .leaks import Leaks

__all__ = ["Console", "Guest", "Leaks"]
