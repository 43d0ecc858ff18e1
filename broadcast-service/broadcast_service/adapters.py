"""The edges the sender sends through: SMTP for e-mail (`smtp.SmtpConnection`) and an HTTP
webhook (httpx) for SMS, push, voice and messenger providers. Each turns one message into a
SendResult and never raises for what the network or the provider does: delivery.py says what the
answer means.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import parseaddr
from typing import Protocol

import httpx

from broadcast_service import metrics
from broadcast_service.delivery import (
    OutboundMessage,
    Result,
    SendResult,
    http_result,
    message_id_header,
    smtp_result,
    webhook_body,
)
from broadcast_service.mail import MailIdentity, build_email, smtp_path
from broadcast_service.smtp import SmtpConnection, SmtpSecurity

log = logging.getLogger(__name__)


class Adapter(Protocol):
    connections: int
    """How many messages it sends at a time."""

    async def send(self, message: OutboundMessage) -> SendResult: ...

    async def close(self) -> None: ...


class SmtpAdapter:
    """E-mail over SMTP through a fixed number of connections, each kept open for many messages
    (the number is the concurrency: one SMTP transaction at a time per connection).

    Each message is one transaction of `smtp.SmtpConnection`: the envelope pipelined when the
    server offers it, the addresses checked once (`smtp_path`), one timeout over the whole.
    """

    def __init__(
        self,
        identity: MailIdentity,
        host: str,
        port: int,
        connections: int,
        timeout: float,
        clock: Callable[[], datetime],
        security: SmtpSecurity,
    ) -> None:
        self.identity = identity
        self.clock = clock
        self.connections = connections
        self.timeout = timeout
        self.mail_from = smtp_path(parseaddr(identity.sender)[1])
        self.idle: asyncio.Queue[SmtpConnection] = asyncio.Queue()
        self.failed_in_a_row = 0
        """Connections failed since a transaction last went through (an outage's length)."""
        for _ in range(connections):
            self.idle.put_nowait(SmtpConnection(host, port, security))

    async def send(self, message: OutboundMessage) -> SendResult:
        try:
            rcpt_to = smtp_path(message.address)
        except ValueError as error:
            return SendResult(Result.PERMANENT, str(error)[:300])
        content = build_email(self.identity, message, self.clock())
        connection = await self.idle.get()
        try:
            async with asyncio.timeout(self.timeout):
                refused = await connection.send(self.mail_from, rcpt_to, content)
        except (OSError, TimeoutError) as error:  # the connection is dropped: the next reopens
            self._connection_failed(error)
            return SendResult(Result.TEMPORARY, f"SMTP connection: {error!r}"[:300])
        finally:
            self.idle.put_nowait(connection)
        self._connection_worked()
        if refused is not None:
            reply = refused.reply
            return smtp_result(reply.code, reply.message, recipient_refused=refused.recipient)
        reference = message_id_header(message.message_id, self.identity.message_id_domain)
        return SendResult(Result.SENT, "accepted", reference)

    def _connection_failed(self, error: BaseException) -> None:
        """Count the failure; log it at WARNING only if it is the first since a transaction
        went through: with the relay down every connection of every round fails, and one
        warning an outage (and "recovered" at its end) says it all."""
        metrics.SMTP_CONNECTION_FAILURES.inc()
        self.failed_in_a_row += 1
        level = logging.WARNING if self.failed_in_a_row == 1 else logging.DEBUG
        log.log(level, "SMTP connection failed", extra={"error": repr(error)[:300]})

    def _connection_worked(self) -> None:
        """End an outage, if there was one, with one line saying how many connections failed."""
        if self.failed_in_a_row:
            failed = self.failed_in_a_row
            log.info("SMTP connection recovered", extra={"failed_connections": failed})
            self.failed_in_a_row = 0

    async def close(self) -> None:
        while not self.idle.empty():
            connection = self.idle.get_nowait()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await connection.quit()


class WebhookAdapter:
    """Posts each message as JSON to its channel's provider URL, with `Idempotency-Key` set to
    the message id: a provider that dedupes by it sends a message posted twice once."""

    def __init__(self, urls: Mapping[str, str], connections: int, timeout: float) -> None:
        self.urls = dict(urls)
        self.connections = connections
        self.client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        url = self.urls.get(message.channel)
        if url is None:
            return SendResult(Result.PERMANENT, f"no provider configured for {message.channel}")
        try:
            response = await self.client.post(
                url,
                json=webhook_body(message),
                headers={"Idempotency-Key": message.message_id},
            )
        except httpx.HTTPError as error:
            return SendResult(Result.TEMPORARY, f"webhook: {error!r}"[:300])
        result = http_result(response.status_code, response.reason_phrase)
        if result.result is Result.SENT:
            reference = response.headers.get("X-Message-Id") or message.message_id
            return SendResult(Result.SENT, result.detail, reference)
        return result

    async def close(self) -> None:
        await self.client.aclose()
