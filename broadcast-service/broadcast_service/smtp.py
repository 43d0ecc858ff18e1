"""A lean SMTP client for the sender: one connection, one mail transaction at a time, with the
envelope pipelined (RFC 2920) when the server offers PIPELINING.

aiosmtplib answers one command before it writes the next, so a message costs four round trips
(MAIL, RCPT, DATA, content), each a write, a read, a parse and a task wake-up on both sides; with
PIPELINING, MAIL, RCPT and DATA go in one write and their three replies are read together, so a
message is two round trips. That was about a quarter of the sender's CPU a message
(docs/performance.md). A server without PIPELINING (aiosmtpd in the tests) gets the commands one
at a time, as before. The client only says what the server replied; `delivery.smtp_result` says
what a reply means.

The content is taken as given: CRLF line ends (`mail.build_email` writes them; anything else is
normalised here), dot-stuffed here (RFC 5321 4.5.2).

A provider is reached over TLS (STARTTLS on 587 or implicit on 465, certificates verified) and
logged in to with AUTH PLAIN, or LOGIN when the server offers only that (`SmtpSecurity`); a
session that cannot be set up so fails the connection (`SmtpSessionError`) before any mail is
sent, never falling back to the clear.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from typing import Literal, cast

from crm_shared.runtime.http import is_loopback

OK = 250
FORWARDED = 251
START_DATA = 354


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    message: str


class SmtpProtocolError(OSError):
    """The server said something that is not an SMTP reply, or closed the connection: the
    connection is dropped and the next transaction starts on a new one."""


class SmtpSessionError(SmtpProtocolError):
    """The session could not be set up as configured (STARTTLS not offered or refused, AUTH
    refused): the connection fails, like any other, and nothing is sent on it."""


TlsMode = Literal["none", "starttls", "implicit"]


@dataclass(frozen=True)
class SmtpSecurity:
    """How the connections are protected and whom they log in as; one TLS context (verifying,
    with the system's CAs or `ca_file`'s) shared by all of them."""

    tls: TlsMode = "none"
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    ca_file: str | None = None
    context: ssl.SSLContext | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        context = None if self.tls == "none" else ssl.create_default_context(cafile=self.ca_file)
        object.__setattr__(self, "context", context)


PLAIN = SmtpSecurity()


@dataclass(frozen=True, slots=True)
class Refused:
    """The transaction ended without the message: which step the server refused, and its reply."""

    reply: Reply
    recipient: bool
    """The refusal was the answer to RCPT (the address itself)."""


class _Replies(asyncio.Protocol):
    """Parses the server's replies as they arrive and hands over as many as a transaction waits
    for, together (a pipelined envelope's three replies usually arrive in one read)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.lines: list[str] = []
        self.replies: deque[Reply] = deque()
        self.wanted = 0
        self.waiter: asyncio.Future[list[Reply]] | None = None
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        for raw in complete:
            line = raw.rstrip(b"\r")
            code = line[:3]
            separator = line[3:4]
            if not code.isdigit() or separator not in (b"", b" ", b"-"):
                self._fail(SmtpProtocolError(f"not an SMTP reply: {line[:100]!r}"))
                return
            self.lines.append(line[4:].decode("utf-8", "replace"))
            if separator != b"-":
                self.replies.append(Reply(int(code), "\n".join(self.lines)))
                self.lines = []
        self._hand_over()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(SmtpProtocolError(f"connection closed by the server ({exc!r})"))

    def _fail(self, error: Exception) -> None:
        self.error = error
        if self.transport is not None:
            self.transport.abort()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def _hand_over(self) -> None:
        waiter = self.waiter
        if waiter is not None and len(self.replies) >= self.wanted and not waiter.done():
            waiter.set_result([self.replies.popleft() for _ in range(self.wanted)])

    async def read(self, count: int) -> list[Reply]:
        """The next `count` replies."""
        if self.error is not None:
            raise self.error
        self.wanted = count
        self.waiter = asyncio.get_running_loop().create_future()
        self._hand_over()
        try:
            return await self.waiter
        finally:
            self.waiter = None


_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")


def _wire(content: bytes) -> bytes:
    """The content as DATA carries it: CRLF line ends, a leading dot doubled, ended by
    CRLF.CRLF. The usual content (already CRLF, no line starting with a dot) costs a few scans."""
    crlf = content.count(b"\r\n")
    if (
        content.count(b"\n") != crlf
        or content.count(b"\r") != crlf
        or not content.endswith(b"\r\n")
    ):
        content = _BARE_LINE_END.sub(b"\r\n", content)
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
    if content.startswith(b"."):
        content = b"." + content
    if b"\n." in content:
        content = content.replace(b"\n.", b"\n..")
    return content + b".\r\n"


@cache
def _local_name() -> str:
    """How the client names itself in EHLO: its fully qualified name, looked up once."""
    return socket.getfqdn() or "localhost"


class SmtpConnection:
    """One connection to an SMTP server, opened on first use and again after it was dropped."""

    def __init__(self, host: str, port: int, security: SmtpSecurity = PLAIN) -> None:
        if security.credentials is not None and security.tls == "none" and not is_loopback(host):
            raise ValueError(f"SMTP credentials would go to {host} in the clear: set TLS")
        self.host = host
        self.port = port
        self.security = security
        self.replies: _Replies | None = None
        self.pipelining = False

    @property
    def is_connected(self) -> bool:
        return self.replies is not None and self.replies.error is None

    async def _connect(self) -> _Replies:
        loop = asyncio.get_running_loop()
        security = self.security
        implicit = security.context if security.tls == "implicit" else None
        _, replies = await loop.create_connection(_Replies, self.host, self.port, ssl=implicit)
        self.replies = replies
        (greeting,) = await replies.read(1)
        if greeting.code != 220:
            raise SmtpProtocolError(f"greeting {greeting.code} {greeting.message}")
        keywords = await self._hello(replies)
        if security.tls == "starttls":
            await self._start_tls(replies, keywords)
            keywords = await self._hello(replies)  # RFC 3207: forget what was said in the clear
        if security.credentials is not None:
            await self._log_in(replies, keywords.get("AUTH", set()), security.credentials)
        self.pipelining = "PIPELINING" in keywords
        return replies

    async def _hello(self, replies: _Replies) -> dict[str, set[str]]:
        """EHLO (HELO if refused): the extensions the server offers, each with its parameters
        (`AUTH`'s are its mechanisms; the old `AUTH=LOGIN` form counts too)."""
        (hello,) = await self._command(replies, b"EHLO " + _local_name().encode())
        if hello.code != OK:
            (hello,) = await self._command(replies, b"HELO " + _local_name().encode())
            if hello.code != OK:
                raise SmtpProtocolError(f"HELO refused: {hello.code} {hello.message}")
            return {}
        offered: dict[str, set[str]] = {}
        for line in hello.message.split("\n")[1:]:
            words = line.upper().split()
            if words and words[0].startswith("AUTH="):
                words = ["AUTH", words[0].removeprefix("AUTH="), *words[1:]]
            if words:
                offered.setdefault(words[0], set()).update(words[1:])
        return offered

    async def _log_in(
        self, replies: _Replies, mechanisms: set[str], credentials: tuple[str, str]
    ) -> None:
        """AUTH PLAIN if the server offers it, else AUTH LOGIN; a server that offers neither
        fails the connection, and credentials never go to a server that did not ask for them."""
        user, password = credentials
        if "PLAIN" in mechanisms:
            steps = [b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode())]
        elif "LOGIN" in mechanisms:
            steps = [b"AUTH LOGIN", base64.b64encode(user.encode())]
            steps.append(base64.b64encode(password.encode()))
        else:
            offered = " ".join(sorted(mechanisms)) or "none"
            raise SmtpSessionError(
                f"{self.host} offers no AUTH mechanism we speak (PLAIN, LOGIN; offered: "
                f"{offered}): credentials are set, nothing sent"
            )
        *challenged, last = steps
        for step in challenged:  # LOGIN: each answers a 334 challenge
            (challenge,) = await self._command(replies, step)
            if challenge.code != 334:
                raise SmtpSessionError(f"AUTH refused: {challenge.code} {challenge.message}")
        (auth,) = await self._command(replies, last)
        if auth.code != 235:
            raise SmtpSessionError(f"AUTH refused: {auth.code} {auth.message}")

    async def _start_tls(self, replies: _Replies, keywords: dict[str, set[str]]) -> None:
        """Upgrade to TLS, or fail: a server that does not offer it gets nothing in the clear."""
        if "STARTTLS" not in keywords:
            raise SmtpSessionError(f"{self.host} does not offer STARTTLS: nothing sent")
        (ready,) = await self._command(replies, b"STARTTLS")
        if ready.code != 220:
            raise SmtpSessionError(f"STARTTLS refused: {ready.code} {ready.message}")
        if replies.buffer or replies.replies:  # sent before TLS: could be injected
            raise SmtpSessionError("the server spoke past its STARTTLS reply")
        assert replies.transport is not None and self.security.context is not None
        upgraded = await asyncio.get_running_loop().start_tls(
            replies.transport, replies, self.security.context, server_hostname=self.host
        )
        if upgraded is None:
            raise SmtpProtocolError("connection closed during the TLS handshake")
        replies.transport = upgraded

    async def _command(self, replies: _Replies, *commands: bytes) -> list[Reply]:
        """Write the commands in one go and read one reply each."""
        assert replies.transport is not None
        replies.transport.write(b"".join(command + b"\r\n" for command in commands))
        return await replies.read(len(commands))

    async def send(self, mail_from: bytes, rcpt_to: bytes, content: bytes) -> Refused | None:
        """One mail transaction: None if the server accepted the message, else the refusal
        (the envelope is reset, or the connection dropped, so the next transaction starts clean).
        Raises OSError (SmtpProtocolError among them) when the connection fails."""
        try:
            return await self._transaction(mail_from, rcpt_to, content)
        except BaseException:  # failed, timed out or cancelled: replies may still be on the way
            self.close()
            raise

    async def _transaction(
        self, mail_from: bytes, rcpt_to: bytes, content: bytes
    ) -> Refused | None:
        replies = self.replies if self.is_connected else None
        if replies is None:
            replies = await self._connect()
        envelope = (b"MAIL FROM:" + mail_from, b"RCPT TO:" + rcpt_to, b"DATA")
        if self.pipelining:
            mail, rcpt, data = await self._command(replies, *envelope)
        else:
            (mail,) = await self._command(replies, envelope[0])
            if mail.code != OK:
                return await self._reset(replies, Refused(mail, recipient=False))
            (rcpt,) = await self._command(replies, envelope[1])
            if rcpt.code not in (OK, FORWARDED):
                return await self._reset(replies, Refused(rcpt, recipient=True))
            (data,) = await self._command(replies, envelope[2])
        if mail.code != OK or rcpt.code not in (OK, FORWARDED):
            refused = Refused(mail, False) if mail.code != OK else Refused(rcpt, True)
            if data.code == START_DATA:  # it took DATA without a recipient: end it unused
                self.close()
                return refused
            return await self._reset(replies, refused)
        if data.code != START_DATA:
            return await self._reset(replies, Refused(data, recipient=False))
        assert replies.transport is not None
        replies.transport.write(_wire(content))
        (done,) = await replies.read(1)
        if done.code != OK:
            return await self._reset(replies, Refused(done, recipient=False))
        return None

    async def _reset(self, replies: _Replies, refused: Refused) -> Refused:
        """After a refusal the envelope is dropped (RSET); after a reply SMTP does not define
        there (below 400), or a refused RSET, the connection is closed instead."""
        if refused.reply.code < 400:
            self.close()
            return refused
        try:
            (reset,) = await self._command(replies, b"RSET")
        except OSError:
            reset = Reply(0, "")
        if reset.code != OK:
            self.close()
        return refused

    def close(self) -> None:
        """Drop the connection at once; the next transaction opens a new one."""
        if self.replies is not None and self.replies.transport is not None:
            self.replies.transport.abort()
        self.replies = None

    async def quit(self) -> None:
        """End the session politely."""
        replies = self.replies
        if replies is not None and self.is_connected:
            await self._command(replies, b"QUIT")
        self.close()
