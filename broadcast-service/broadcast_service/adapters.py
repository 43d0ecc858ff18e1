"""The edges the sender sends through: SMTP for e-mail (aiosmtplib) and an HTTP webhook (httpx)
for SMS, push, voice and messenger providers. Each turns one message into a SendResult and
never raises for what the network or the provider does: delivery.py says what the answer means.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

import aiosmtplib
import httpx

from broadcast_service.delivery import (
    OutboundMessage,
    Result,
    SendResult,
    http_result,
    message_id_header,
    smtp_result,
    webhook_body,
)
from broadcast_service.mail import MailIdentity, build_email


class Adapter(Protocol):
    connections: int
    """How many messages it sends at a time."""

    async def send(self, message: OutboundMessage) -> SendResult: ...

    async def close(self) -> None: ...


class SmtpAdapter:
    """E-mail over SMTP through a fixed number of connections, each kept open for many messages
    (the number is the concurrency: one SMTP transaction at a time per connection)."""

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
        self.idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        for _ in range(connections):
            self.idle.put_nowait(aiosmtplib.SMTP(hostname=host, port=port, timeout=timeout))

    async def send(self, message: OutboundMessage) -> SendResult:
        content = build_email(self.identity, message, self.clock())
        reference = message_id_header(message.message_id, self.identity.message_id_domain)
        smtp = await self.idle.get()
        try:
            if not smtp.is_connected:
                await smtp.connect()
            await smtp.sendmail(self.identity.sender, [message.address], content)
            return SendResult(Result.SENT, "accepted", reference)
        except aiosmtplib.SMTPRecipientsRefused as refused:
            first = refused.recipients[0]
            return smtp_result(first.code, first.message, recipient_refused=True)
        except aiosmtplib.SMTPResponseException as error:
            if error.code < 400:  # an answer SMTP does not define here: start afresh
                smtp.close()
            return smtp_result(error.code, error.message, recipient_refused=False)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            smtp.close()  # connection lost or refused: the next send reconnects
            return SendResult(Result.TEMPORARY, f"SMTP connection: {error!r}"[:300])
        finally:
            self.idle.put_nowait(smtp)

    async def close(self) -> None:
        while not self.idle.empty():
            smtp = self.idle.get_nowait()
            if smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await smtp.quit()


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
