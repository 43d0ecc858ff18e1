"""The sender's SMTP client against aiosmtpd over TLS on loopback, with a self-signed certificate
made here (openssl) and given as the CA: STARTTLS and implicit TLS deliver, logged in with AUTH
PLAIN (LOGIN when only that is offered); a server without STARTTLS, without a mechanism we speak,
or a wrong password, fails the connection before any mail is sent, and the adapter reports that
as a temporary failure (the message is retried)."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from prometheus_client import REGISTRY

from broadcast_service import adapters
from broadcast_service.adapters import SmtpAdapter
from broadcast_service.delivery import OutboundMessage, Result
from broadcast_service.mail import MailIdentity
from broadcast_service.smtp import PLAIN, SmtpConnection, SmtpSecurity, SmtpSessionError, TlsMode

pytestmark = pytest.mark.component

MESSAGE = b"From: news@crm.example.com\r\nTo: ada@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
USER, PASSWORD = "crm", "s3cret"
AIOSMTPD_MECHANISMS = frozenset({"PLAIN", "LOGIN"})


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make the test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class _Keeper:
    """Keeps each message with whether its session was logged in and over TLS, and the AUTH
    mechanism of each log-in the server checked."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes | None, bool, bool]] = []
        self.mechanisms: list[str] = []
        self.down = False
        """Drop every session at MAIL, like a relay going away."""

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.down:
            server.transport.abort()
            return "421 4.3.2 going away"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        content = envelope.original_content
        over_tls = server.transport.get_extra_info("ssl_object") is not None
        self.received.append((content, bool(session.authenticated), over_tls))
        return "250 OK queued"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.mechanisms.append(mechanism)
        right = (data.login, data.password) == (USER.encode(), PASSWORD.encode())
        return AuthResult(success=right, handled=False)  # not handled: aiosmtpd answers 535


@pytest.fixture
def serve(certificate: tuple[Path, Path]) -> Iterator[Any]:
    """Starts aiosmtpd on a free loopback port: `starttls` offers STARTTLS (and AUTH only
    after it), `implicit` speaks TLS from the connect, `none` offers neither; AUTH offers the
    `mechanisms` given (aiosmtpd's PLAIN and LOGIN by default)."""
    controllers: list[Controller] = []

    def start(tls: TlsMode, mechanisms: Iterable[str] = AIOSMTPD_MECHANISMS) -> tuple[_Keeper, int]:
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(*certificate)
        with socket.socket() as probe:  # aiosmtpd's controller cannot be given port 0
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        keeper = _Keeper()
        options: dict[str, Any] = {
            "authenticator": keeper.authenticate,
            "auth_require_tls": True,
            "auth_exclude_mechanism": AIOSMTPD_MECHANISMS - set(mechanisms),
        }
        if tls == "starttls":
            options |= {"tls_context": server_context, "require_starttls": True}
        elif tls == "implicit":  # aiosmtpd counts only STARTTLS as TLS for AUTH
            options |= {"ssl_context": server_context, "auth_require_tls": False}
        controller = Controller(keeper, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return keeper, port

    yield start
    for controller in controllers:
        controller.stop()


def _security(tls: TlsMode, certificate: tuple[Path, Path], password: str = PASSWORD) -> Any:
    return SmtpSecurity(tls, (USER, password), str(certificate[0]))


async def _send(connection: SmtpConnection) -> Any:
    return await connection.send(b"<news@crm.example.com>", b"<ada@example.com>", MESSAGE)


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_a_message_goes_over_tls_logged_in(
    serve: Any, certificate: tuple[Path, Path], tls: TlsMode
) -> None:
    keeper, port = serve(tls)
    connection = SmtpConnection("127.0.0.1", port, _security(tls, certificate))
    assert await _send(connection) is None
    assert await _send(connection) is None  # the same session, still over TLS
    await connection.quit()
    assert keeper.received == [(MESSAGE, True, True)] * 2
    assert keeper.mechanisms == ["PLAIN"]  # offered PLAIN and LOGIN: PLAIN, once a session


async def test_a_server_offering_only_login_is_logged_in_with_login(
    serve: Any, certificate: tuple[Path, Path]
) -> None:
    keeper, port = serve("starttls", mechanisms={"LOGIN"})
    connection = SmtpConnection("127.0.0.1", port, _security("starttls", certificate))
    assert await _send(connection) is None
    await connection.quit()
    assert keeper.mechanisms == ["LOGIN"]
    assert keeper.received == [(MESSAGE, True, True)]


async def test_a_wrong_password_over_login_is_refused(
    serve: Any, certificate: tuple[Path, Path]
) -> None:
    keeper, port = serve("starttls", mechanisms={"LOGIN"})
    connection = SmtpConnection("127.0.0.1", port, _security("starttls", certificate, "wrong"))
    with pytest.raises(SmtpSessionError, match="AUTH refused: 535"):
        await _send(connection)
    assert keeper.mechanisms == ["LOGIN"] and keeper.received == []


@pytest.mark.parametrize(
    ("tls", "mechanisms", "offered"),
    [("none", AIOSMTPD_MECHANISMS, "none"), ("starttls", (), "none")],
    ids=["no-auth-line", "auth-without-mechanisms"],
)
async def test_credentials_never_go_to_a_server_that_offers_no_mechanism_we_speak(
    serve: Any,
    certificate: tuple[Path, Path],
    tls: TlsMode,
    mechanisms: Iterable[str],
    offered: str,
) -> None:
    """`none`: aiosmtpd offers AUTH only over TLS, so on this plain (loopback) session it
    offers none; `auth-without-mechanisms`: an AUTH line naming no mechanism."""
    keeper, port = serve(tls, mechanisms=mechanisms)
    connection = SmtpConnection("127.0.0.1", port, _security(tls, certificate))
    with pytest.raises(SmtpSessionError, match=f"offers no AUTH mechanism.*offered: {offered}"):
        await _send(connection)
    assert not connection.is_connected
    assert keeper.mechanisms == [] and keeper.received == []


async def test_a_server_without_starttls_gets_nothing(
    serve: Any, certificate: tuple[Path, Path]
) -> None:
    keeper, port = serve("none")
    connection = SmtpConnection("127.0.0.1", port, _security("starttls", certificate))
    with pytest.raises(SmtpSessionError, match="does not offer STARTTLS"):
        await _send(connection)
    assert not connection.is_connected
    assert keeper.received == []


async def test_an_unknown_certificate_fails_the_connection(serve: Any) -> None:
    keeper, port = serve("implicit")
    connection = SmtpConnection("127.0.0.1", port, SmtpSecurity("implicit"))  # system CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        await _send(connection)
    assert keeper.received == []


def _message() -> OutboundMessage:
    return OutboundMessage(
        message_id="m-1",
        campaign_id=None,
        customer_id="c-1",
        channel="email",
        address="ada@example.com",
        purpose="service",
        subject="hi",
        body_text="hello",
        body_html=None,
        attempts=0,
    )


@pytest.mark.parametrize("password", [PASSWORD, "wrong"], ids=["right", "wrong"])
async def test_a_wrong_password_is_a_temporary_failure_and_nothing_is_sent(
    serve: Any, certificate: tuple[Path, Path], password: str
) -> None:
    keeper, port = serve("starttls")
    identity = MailIdentity("CRM <news@crm.example.com>", "crm.example.com", "http://x", "k")
    security = _security("starttls", certificate, password)
    adapter = SmtpAdapter(identity, "127.0.0.1", port, 1, 10, lambda: datetime.now(UTC), security)
    result = await adapter.send(_message())
    await adapter.close()
    if password == PASSWORD:
        assert result.result is Result.SENT
        assert len(keeper.received) == 1
    else:
        assert result.result is Result.TEMPORARY
        assert "AUTH refused: 535" in result.detail
        assert keeper.received == []


def test_credentials_never_go_in_the_clear_to_a_remote_host() -> None:
    with pytest.raises(ValueError, match="in the clear"):
        SmtpConnection("smtp.example.com", 25, SmtpSecurity("none", (USER, PASSWORD)))
    SmtpConnection("127.0.0.1", 25, SmtpSecurity("none", (USER, PASSWORD)))  # loopback: allowed


async def test_a_relay_outage_is_logged_once_at_its_start_and_once_at_its_end(
    serve: Any, certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Every connection of every round fails while the relay is down: one warning, the repeats
    at DEBUG, "recovered" once a transaction goes through, and a warning again at the next."""
    keeper, port = serve("none")
    identity = MailIdentity("CRM <news@crm.example.com>", "crm.example.com", "http://x", "k")
    adapter = SmtpAdapter(identity, "127.0.0.1", port, 2, 10, lambda: datetime.now(UTC), PLAIN)
    counted = "crm_broadcast_smtp_connection_failures_total"
    failures_before = REGISTRY.get_sample_value(counted) or 0.0
    caplog.set_level(logging.DEBUG, logger=adapters.__name__)
    results = []
    for down in (True, True, True, False, False, True):
        keeper.down = down
        results.append((await adapter.send(_message())).result)
    await adapter.close()
    assert results == [Result.TEMPORARY] * 3 + [Result.SENT] * 2 + [Result.TEMPORARY]
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == adapters.__name__]
    failed, recovered = "SMTP connection failed", "SMTP connection recovered"
    assert logged == [
        ("WARNING", failed),
        ("DEBUG", failed),
        ("DEBUG", failed),
        ("INFO", recovered),
        ("WARNING", failed),
    ]
    (end,) = [r for r in caplog.records if r.getMessage() == recovered]
    assert end.failed_connections == 3  # type: ignore[attr-defined]
    assert (REGISTRY.get_sample_value(counted) or 0.0) - failures_before == 4
