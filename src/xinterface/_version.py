"""The one version string: pyproject.toml reads it (``dynamic``), ``--version`` shows it and
CHANGELOG.md's newest entry names it (tests/test_docs.py checks the three agree)."""

__version__ = "0.3.0"
