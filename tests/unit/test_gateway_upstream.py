"""How the gateway names a service it cannot reach: refused is not slow."""

from __future__ import annotations

import socket

import pytest

from gateway_service.config import GatewaySettings
from gateway_service.upstream import UpstreamFailure, connect, is_json_object


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


@pytest.mark.parametrize(
    ("content", "whole"),
    [
        (b'{"customer_id": "c1", "items": [{"summary": "\\u00e9"}], "next_cursor": null}', True),
        (b" {} ", True),
        (b'{"items": [1, 2]', False),  # cut off
        (b"[1, 2]", False),
        (b'"a page"', False),
        (b"", False),
        (b'{"summary": "\xff"}', False),  # not UTF-8
        (b"Internal Server Error", False),
    ],
)
def test_a_timeline_page_is_passed_on_only_when_it_is_one_json_object(
    content: bytes, whole: bool
) -> None:
    assert is_json_object(content) is whole
