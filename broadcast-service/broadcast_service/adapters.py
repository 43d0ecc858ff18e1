"""The edges the sender sends through: SMTP for e-mail (aiosmtplib) and an HTTP webhook (httpx)
for SMS, push, voice and messenger providers. Each turns one message into a SendResult and
never raises for what the network or the provider does: delivery.py says what the answer means.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import parseaddr
from typing import Protocol

import aiosmtplib
import httpx
from aiosmtplib import SMTPStatus

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


class Adapter(Protocol):
    connections: int
    """How many messages it sends at a time."""

    async def send(self, message: OutboundMessage) -> SendResult: ...

    async def close(self) -> None: ...


class SmtpAdapter:
    """E-mail over SMTP through a fixed number of connections, each kept open for many messages
    (the number is the concurrency: one SMTP transaction at a time per connection).

    Each message is MAIL, RCPT and DATA through aiosmtplib's command API rather than `sendmail`,
    which parses both addresses twice with the email package and arms a timer per command: that
    was a third of the sender's CPU a message. The addresses are checked once (`smtp_path`) and
    one timeout covers the whole transaction.
    """

    def __init__(
        self,
        identity: MailIdentity,
        host: str,
        port: int,
        connections: int,
        timeout: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.identity = identity
        self.clock = clock
        self.connections = connections
        self.timeout = timeout
        self.mail_from = b"FROM:" + smtp_path(parseaddr(identity.sender)[1])
        self.idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        for _ in range(connections):
            self.idle.put_nowait(aiosmtplib.SMTP(hostname=host, port=port, timeout=timeout))

    async def send(self, message: OutboundMessage) -> SendResult:
        try:
            rcpt_to = b"TO:" + smtp_path(message.address)
        except ValueError as error:
            return SendResult(Result.PERMANENT, str(error)[:300])
        content = build_email(self.identity, message, self.clock())
        reference = message_id_header(message.message_id, self.identity.message_id_domain)
        smtp = await self.idle.get()
        try:
            async with asyncio.timeout(self.timeout):
                return await self._transaction(smtp, rcpt_to, content, reference)
        except aiosmtplib.SMTPResponseException as error:  # DATA refused
            await _reset(smtp, error.code)
            return smtp_result(error.code, error.message, recipient_refused=False)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            smtp.close()  # connection lost or refused: the next send reconnects
            return SendResult(Result.TEMPORARY, f"SMTP connection: {error!r}"[:300])
        finally:
            self.idle.put_nowait(smtp)

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, rcpt_to: bytes, content: bytes, reference: str
    ) -> SendResult:
        """One message, each command answered before the next (aiosmtpd offers no PIPELINING);
        the commands set no timers of their own: the caller times the whole."""
        if not smtp.is_connected:
            await smtp.connect(timeout=None)
            if smtp.is_ehlo_or_helo_needed:
                await smtp.ehlo(timeout=None)
        mail = await smtp.execute_command(b"MAIL", self.mail_from, timeout=None)
        if mail.code != SMTPStatus.completed:
            await smtp.rset(timeout=None)
            return smtp_result(mail.code, mail.message, recipient_refused=False)
        rcpt = await smtp.execute_command(b"RCPT", rcpt_to, timeout=None)
        if rcpt.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            await smtp.rset(timeout=None)
            return smtp_result(rcpt.code, rcpt.message, recipient_refused=True)
        await smtp.data(content, timeout=None)
        return SendResult(Result.SENT, "accepted", reference)

    async def close(self) -> None:
        while not self.idle.empty():
            smtp = self.idle.get_nowait()
            if smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await smtp.quit()


async def _reset(smtp: aiosmtplib.SMTP, code: int) -> None:
    """After a refused DATA the envelope is dropped (RSET); after an answer SMTP does not define
    there, or a failed RSET, the connection is closed and the next send starts afresh."""
    if code >= 400:
        try:
            await smtp.rset()
            return
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
    smtp.close()


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
