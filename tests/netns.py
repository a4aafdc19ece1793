"""Network namespaces for tests (xinterface/bench/netns.py): skipped without root."""

from __future__ import annotations

import pytest

from xinterface.bench.netns import inside, ip, netns, netns_usable, tap

needs_netns = pytest.mark.skipif(not netns_usable(),
                                 reason="needs root, iproute2 and /dev/net/tun")

__all__ = ["inside", "ip", "needs_netns", "netns", "tap"]
