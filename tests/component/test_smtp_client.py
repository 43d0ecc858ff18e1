"""The sender's SMTP client against servers on loopback: a scripted one that offers PIPELINING (or
not) and answers each command as a relay would, and aiosmtpd, which offers no PIPELINING. Every
reply code must mean what it meant with aiosmtplib: the refusal is reported with the step that
was refused, the connection is left ready for the next message, and the bytes arrive as given."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from broadcast_service.smtp import Refused, Reply, SmtpConnection

pytestmark = pytest.mark.component

MESSAGE = (
    b"From: news@crm.example.com\r\nTo: ada@example.com\r\nSubject: hello\r\n\r\n"
    b"first line\r\n.a line that starts with a dot\r\n..and two\r\n.\r\nlast line\r\n"
)


NO_RECIPIENT = Reply(554, "5.5.1 no valid recipients")


@dataclass
class ScriptedRelay:
    """Answers like a relay: RCPT to `bounce...` 550, to `busy...` 451; MAIL from `refused...`
    553; DATA 554 when the only recipient is `nodata...`; a content holding `spam` 554 at the
    final dot. With `pipelining` it offers PIPELINING and, to prove the client pipelines, answers
    MAIL, RCPT and DATA only once all three have arrived."""

    pipelining: bool
    received: list[bytes] = field(default_factory=list)
    sessions: int = 0
    drop_after_mail: bool = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        writer.write(b"220 relay ready\r\n")
        held: list[bytes] = []
        rcpt = b""
        accepted: list[bool] = []  # the replies of this transaction so far (MAIL, RCPT)
        try:
            while line := await reader.readline():
                command = line.rstrip(b"\r\n")
                verb = command.split(b" ", 1)[0].upper()
                if verb == b"EHLO":
                    extras = b"250-PIPELINING\r\n" if self.pipelining else b""
                    writer.write(b"250-relay\r\n" + extras + b"250 8BITMIME\r\n")
                elif verb in (b"MAIL", b"RCPT", b"DATA"):
                    if verb == b"MAIL" and self.drop_after_mail:
                        writer.close()
                        return
                    if verb == b"MAIL":
                        accepted = []
                    elif verb == b"RCPT":
                        rcpt = command.split(b":", 1)[1].strip(b"<>").lower()
                    held.append(self._answer(verb, command, rcpt, accepted))
                    accepted.append(held[-1].startswith(b"250"))
                    if self.pipelining and verb != b"DATA":
                        continue
                    for reply in held:
                        writer.write(reply)
                    if held[-1].startswith(b"354"):
                        await self._content(reader, writer)
                    held = []
                elif verb == b"RSET":
                    writer.write(b"250 2.0.0 reset\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"502 5.5.2 unknown command\r\n")
                await writer.drain()
        finally:
            writer.close()

    def _answer(self, verb: bytes, command: bytes, rcpt: bytes, accepted: list[bool]) -> bytes:
        if verb == b"MAIL":
            refused = b"<refused" in command.lower()
            return b"553 5.1.8 sender refused\r\n" if refused else b"250 2.1.0 ok\r\n"
        if verb == b"RCPT":
            if rcpt.startswith(b"bounce"):
                return b"550 5.1.1 no such user\r\n"
            if rcpt.startswith(b"busy"):
                return b"451 4.3.0 try again later\r\n"
            return b"250 2.1.5 ok\r\n"
        if accepted[:1] != [True]:
            return b"503 5.5.1 error: need MAIL command\r\n"
        if accepted[1:] != [True] or rcpt.startswith(b"nodata"):
            return b"554 5.5.1 no valid recipients\r\n"
        return b"354 go ahead\r\n"

    async def _content(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines: list[bytes] = []
        while (line := await reader.readline()) != b".\r\n":
            lines.append(line[1:] if line.startswith(b".") else line)  # RFC 5321 4.5.2
        content = b"".join(lines)
        if b"spam" in content:
            writer.write(b"554 5.7.1 looks like spam\r\n")
            return
        self.received.append(content)
        writer.write(b"250 2.0.0 queued\r\n")


@pytest.fixture(params=[True, False], ids=["pipelining", "one-at-a-time"])
async def relay(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ScriptedRelay, int]]:
    scripted = ScriptedRelay(pipelining=request.param)
    server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield scripted, port


async def _send(connection: SmtpConnection, to: str, content: bytes = MESSAGE) -> Refused | None:
    return await asyncio.wait_for(
        connection.send(b"<news@crm.example.com>", f"<{to}>".encode(), content), 10
    )


async def test_messages_arrive_as_given_over_one_kept_connection(
    relay: tuple[ScriptedRelay, int],
) -> None:
    server, port = relay
    connection = SmtpConnection("127.0.0.1", port)
    for _ in range(3):
        assert await _send(connection, "ada@example.com") is None
    assert connection.pipelining is server.pipelining
    assert server.received == [MESSAGE] * 3
    assert server.sessions == 1
    await connection.quit()


@pytest.mark.parametrize(
    ("to", "sender", "content", "expected"),
    [
        ("bounce@example.com", "", MESSAGE, Refused(Reply(550, "5.1.1 no such user"), True)),
        ("busy@example.com", "", MESSAGE, Refused(Reply(451, "4.3.0 try again later"), True)),
        ("ada@example.com", "refused", MESSAGE, Refused(Reply(553, "5.1.8 sender refused"), False)),
        (
            "nodata@example.com",
            "",
            MESSAGE,
            Refused(NO_RECIPIENT, False),
        ),
        ("ada@example.com", "", b"spam\r\n", Refused(Reply(554, "5.7.1 looks like spam"), False)),
    ],
    ids=["recipient-unknown", "recipient-deferred", "sender-refused", "data-refused", "content"],
)
async def test_a_refusal_says_which_step_and_the_next_message_goes_on_the_same_connection(
    relay: tuple[ScriptedRelay, int], to: str, sender: str, content: bytes, expected: Refused
) -> None:
    server, port = relay
    connection = SmtpConnection("127.0.0.1", port)
    mail_from = f"<{sender or 'news'}@crm.example.com>".encode()
    refused = await connection.send(mail_from, f"<{to}>".encode(), content)
    assert refused == expected
    assert await _send(connection, "ada@example.com") is None
    assert server.received == [MESSAGE]
    assert server.sessions == 1  # reset, not reconnected
    await connection.quit()


async def test_a_dropped_connection_fails_the_message_and_the_next_one_reconnects(
    relay: tuple[ScriptedRelay, int],
) -> None:
    server, port = relay
    connection = SmtpConnection("127.0.0.1", port)
    server.drop_after_mail = True
    with pytest.raises(OSError):
        await _send(connection, "ada@example.com")
    server.drop_after_mail = False
    assert await _send(connection, "ada@example.com") is None
    assert server.sessions == 2
    await connection.quit()


async def test_a_timed_out_transaction_leaves_no_reply_behind_for_the_next() -> None:
    """A server slower than the timeout: the late replies must not be read as the next
    message's, so the connection is dropped and the next message starts afresh."""
    sessions = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sessions
        sessions += 1
        relay = ScriptedRelay(pipelining=True)
        if sessions == 1:
            writer.write(b"220 slow\r\n")
            await reader.readline()
            writer.write(b"250 PIPELINING\r\n")
            await asyncio.sleep(1)  # the envelope's replies come too late
            writer.close()
            return
        await relay.serve(reader, writer)

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        connection = SmtpConnection("127.0.0.1", port)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await connection.send(b"<a@example.com>", b"<b@example.com>", MESSAGE)
        assert await _send(connection, "ada@example.com") is None
        assert sessions == 2


class _Keeper:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK queued"


async def test_aiosmtpd_receives_the_bytes_given_with_lines_that_start_with_a_dot() -> None:
    keeper = _Keeper()
    with socket.socket() as probe:  # a free port: aiosmtpd's controller cannot be given 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(keeper, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        connection = SmtpConnection("127.0.0.1", port)
        assert await _send(connection, "ada@example.com") is None
        for bare in (b"\n", b"\r"):
            content = MESSAGE.replace(b"\r\n", bare)
            assert await _send(connection, "bob@example.com", content) is None
        assert connection.pipelining is False
        await connection.quit()
    finally:
        controller.stop()
    first, *bare_line_ends = keeper.envelopes
    assert first.original_content == MESSAGE
    assert [e.original_content for e in bare_line_ends] == [MESSAGE, MESSAGE]  # sent as CRLF
    assert (first.mail_from, first.rcpt_tos) == ("news@crm.example.com", ["ada@example.com"])
