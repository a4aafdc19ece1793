"""Fixtures of the guarantee tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

import xinterface as xi


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch the GIL every microsecond: a thread loses it inside any short window."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.fixture
def intf() -> Iterator[xi.XInterface]:
    with xi.Machine(memory=1 << 20) as m:
        yield xi.bind(m)
