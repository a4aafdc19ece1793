"""``python -m xinterface`` is the ``xinterface`` command."""

from .launch import main

main()
