"""The service token: where APIs listen by default, when they refuse to start, what they admit."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from broadcast_service.config import BroadcastSettings
from crm_shared.runtime.config import PlatformSettings, ServiceSettings
from crm_shared.runtime.http import (
    UnsafeExposure,
    check_exposure,
    is_loopback,
    service_token_headers,
    service_token_problem,
)
from gateway_service.config import GatewaySettings
from interaction_service.config import InteractionSettings
from profile_service.config import ProfileSettings
from recommendation_service.config import RecommendationSettings

TOKEN = "k3Y-5ervice_t0ken-for-tests"
SERVICE_SETTINGS: list[type[ServiceSettings]] = [
    ProfileSettings,
    InteractionSettings,
    BroadcastSettings,
    RecommendationSettings,
]


@pytest.fixture(autouse=True)
def _no_platform_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults are under test: settings from the shell running the tests must not leak in."""
    monkeypatch.delenv("CRM_SERVICE_TOKEN", raising=False)
    for prefix in ("PROFILE", "INTERACTION", "BROADCAST", "RECOMMENDATION", "GATEWAY"):
        monkeypatch.delenv(f"CRM_{prefix}_API_HOST", raising=False)


def _settings(kind: type[ServiceSettings], host: str, token: str | None = None) -> ServiceSettings:
    platform = PlatformSettings(service_token=None if token is None else SecretStr(token))
    return kind(api_host=host, platform=platform)


@pytest.mark.parametrize("kind", SERVICE_SETTINGS)
def test_service_apis_listen_on_loopback_by_default(kind: type[ServiceSettings]) -> None:
    settings = kind()
    assert settings.api_host == "127.0.0.1"
    assert settings.platform.service_token is None
    check_exposure(settings)  # loopback without a token: the local run


def test_the_gateway_listens_everywhere_by_default_and_needs_no_service_token() -> None:
    settings = GatewaySettings()
    assert settings.api_host == "0.0.0.0"
    check_exposure(settings)


@pytest.mark.parametrize("kind", SERVICE_SETTINGS)
def test_the_api_host_comes_from_the_service_prefix(
    kind: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = kind.model_config["env_prefix"]
    monkeypatch.setenv(f"{prefix}API_HOST", "0.0.0.0")
    assert kind().api_host == "0.0.0.0"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "profile-api", ""])
@pytest.mark.parametrize("kind", SERVICE_SETTINGS)
def test_an_exposed_service_api_without_a_token_refuses_to_start(
    kind: type[ServiceSettings], host: str
) -> None:
    with pytest.raises(UnsafeExposure, match="without a service token") as refused:
        check_exposure(_settings(kind, host))
    assert "CRM_SERVICE_TOKEN" in str(refused.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "127.0.0.1"])
def test_a_service_api_with_a_token_may_listen_anywhere(host: str) -> None:
    check_exposure(_settings(ProfileSettings, host, TOKEN))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_hosts_are_recognised(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.4", "example.org", ""])
def test_other_hosts_count_as_exposed(host: str) -> None:
    assert not is_loopback(host)


def test_the_token_comes_from_crm_service_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_SERVICE_TOKEN", TOKEN)
    token = ProfileSettings().platform.service_token
    assert token is not None and token.get_secret_value() == TOKEN
    assert TOKEN not in repr(ProfileSettings())


@pytest.mark.parametrize(
    "bad", ["", "too-short", "has spaces in the middle", "nön-ascii-token-value"]
)
def test_a_weak_or_unsendable_token_is_refused_without_echoing_it(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_SERVICE_TOKEN", bad)
    with pytest.raises(ValidationError) as refused:
        PlatformSettings()
    message = str(refused.value)
    assert "CRM_SERVICE_TOKEN must be at least 16 printable ASCII characters" in message
    assert repr(bad) not in message


def test_the_right_bearer_token_is_admitted() -> None:
    secret = SecretStr(TOKEN)
    assert service_token_problem(f"Bearer {TOKEN}", secret) is None
    assert service_token_problem(f"bearer {TOKEN}", secret) is None, "the scheme is case-blind"


@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        (None, "internal to the platform"),
        ("", "internal to the platform"),
        ("Bearer", "internal to the platform"),
        ("Bearer   ", "internal to the platform"),
        (f"Basic {TOKEN}", "internal to the platform"),
        (TOKEN, "internal to the platform"),
        ("Bearer crm_a78299dbb4c62035_secret", "not the one"),
        (f"Bearer {TOKEN}x", "not the one"),
        (f"Bearer {TOKEN[:-1]}", "not the one"),
        ("Bearer nön-ascii", "not the one"),
    ],
)
def test_anything_else_is_refused_with_a_reason(authorization: str | None, says: str) -> None:
    problem = service_token_problem(authorization, SecretStr(TOKEN))
    assert problem is not None and says in problem
    assert TOKEN not in problem


def test_the_gateway_presents_the_token_only_when_it_has_one() -> None:
    assert service_token_headers(None) == {}
    headers = service_token_headers(SecretStr(TOKEN))
    assert headers == {"Authorization": f"Bearer {TOKEN}"}
    assert service_token_problem(headers["Authorization"], SecretStr(TOKEN)) is None
