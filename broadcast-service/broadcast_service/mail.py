"""An outbound message as an e-mail: plain text with an optional HTML part, a Message-ID derived
from the message id, and for marketing the one-click unsubscribe headers of RFC 8058.

Pure: the signing secret, the links' base URL and the time are passed in.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.utils import format_datetime
from functools import lru_cache

from broadcast_service.delivery import OutboundMessage, is_marketing, message_id_header
from crm_shared.runtime.links import LinkClaims, link_url, sign_link

UNSUBSCRIBE_PATH = "/unsubscribe"
"""Where the gateway serves one-click unsubscribe (RFC 8058): a POST withdraws the consent."""
ONE_CLICK = "List-Unsubscribe=One-Click"


@dataclass(frozen=True)
class MailIdentity:
    """Who the e-mails come from and where their links point."""

    sender: str
    message_id_domain: str
    links_base_url: str
    link_secret: str


def unsubscribe_url(identity: MailIdentity, message: OutboundMessage) -> str:
    """A signed, expiring link that withdraws the consent for this message's purpose and channel."""
    claims = LinkClaims(
        customer_id=message.customer_id,
        purpose=message.purpose,
        channel=message.channel,
        message_id=message.message_id,
    )
    return link_url(
        identity.links_base_url, UNSUBSCRIBE_PATH, sign_link(identity.link_secret, claims)
    )


_OUTSIDE_A_PATH = re.compile(r'[\s<>"\x00-\x1f\x7f]')


def smtp_path(address: str) -> bytes:
    """An address as the SMTP envelope carries it (RFC 5321: `<local@domain>`). Raises
    ValueError for one that cannot be carried as it is: not ASCII, no @, or a character that
    would end the path or the command (space, brackets, quotes, control characters)."""
    if not address.isascii() or "@" not in address or _OUTSIDE_A_PATH.search(address):
        raise ValueError(f"SMTP cannot send to {address!r}")
    return b"<" + address.encode("ascii") + b">"


@lru_cache(maxsize=4)
def _date(at: datetime) -> str:
    """The Date header, written once a second rather than once a message."""
    return format_datetime(at)


def _header(value: str) -> str:
    """A header value as it travels: ASCII as it is, anything else as an RFC 2047 encoded word."""
    if value.isascii() and "\r" not in value and "\n" not in value:
        return value
    return Header(value.replace("\r", " ").replace("\n", " "), "utf-8").encode(linesep="\r\n")


def _part(content_type: str, body: str) -> list[str]:
    """A UTF-8 text part in base64, which every mail system carries unchanged."""
    encoded = base64.encodebytes(body.encode()).decode("ascii").replace("\n", "\r\n")
    return [
        f'Content-Type: {content_type}; charset="utf-8"',
        "Content-Transfer-Encoding: base64",
        "",
        encoded,
    ]


def build_email(identity: MailIdentity, message: OutboundMessage, at: datetime) -> bytes:
    """The e-mail of an outbound message as SMTP carries it (CRLF line ends).

    Written out here rather than through email.message.EmailMessage: its header registry and
    folding cost about 5 ms a message on this machine, more than the whole send, and its folding
    cuts a long List-Unsubscribe link into encoded words, which RFC 8058 clients cannot read.
    The tests parse what this writes with the stdlib's parser.
    """
    message_id = message_id_header(message.message_id, identity.message_id_domain)
    lines = [
        f"From: {_header(identity.sender)}",
        f"To: {_header(message.address)}",
        f"Subject: {_header(message.subject or '')}",
        f"Date: {_date(at.replace(microsecond=0))}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
    ]
    if is_marketing(message):
        lines.append(f"List-Unsubscribe: <{unsubscribe_url(identity, message)}>")
        lines.append(f"List-Unsubscribe-Post: {ONE_CLICK}")
    if not message.body_html:
        lines += _part("text/plain", message.body_text)
    else:
        boundary = f"=_{message_id[1:].split('@', 1)[0]}"
        lines += [f'Content-Type: multipart/alternative; boundary="{boundary}"', ""]
        for content_type, body in (
            ("text/plain", message.body_text),
            ("text/html", message.body_html),
        ):
            lines += [f"--{boundary}", *_part(content_type, body)]
        lines.append(f"--{boundary}--")
    return "\r\n".join(lines).encode("ascii") + b"\r\n"
