"""``python -m xinterface`` is the ``xinterface`` command."""

from .cli import main

main()
