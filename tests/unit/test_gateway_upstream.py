"""How the gateway names a service it cannot reach: refused is not slow."""

from __future__ import annotations

import socket

import pytest

from gateway_service.config import GatewaySettings
from gateway_service.upstream import UpstreamFailure, connect


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_refused_connection_is_reported_unavailable_at_once() -> None:
    settings = GatewaySettings(profile_url=f"http://127.0.0.1:{_closed_port()}")
    async with connect(settings) as services:
        with pytest.raises(UpstreamFailure) as failure:
            await services.get("profile", "/customers/c1", {}, "request-1")
    assert failure.value.outcome.reason == "unavailable: connection refused"
