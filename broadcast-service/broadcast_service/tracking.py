"""Open and click tracking in e-mails: every web link of a rendered e-mail leads through the
gateway's click redirect, and its HTML part carries an open pixel. Pure apart from the tokens'
signing time.

Each tracking link carries a token signed with the platform's link secret (TRACKING_SALT) that
names the message and, for a click, the target, so the gateway records the outcome and redirects
only to a target we signed. Links to the platform's own pages (the preference centre, one-click
unsubscribe) stay as they are, as do mailto:, tel: and in-page links.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

from crm_shared.runtime.links import (
    CLICK_PATH,
    MAX_TRACKING_TOKEN_LENGTH,
    OPEN_PIXEL_PATH,
    TrackingClaims,
    is_web_address,
    link_url,
    sign_tracking,
)

_ANCHOR_HREF = re.compile(
    r"""(<a\s(?:[^>]*?\s)?href\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE
)
"""An anchor's href, quoted either way or not at all."""
_TEXT_URL = re.compile(r"https?://[^\s<>\"]+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'"
"""Punctuation that ends a sentence after a URL in plain text rather than belonging to it."""
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
Click = Callable[[str], str | None]
"""The tracked link to a target, or None to leave the target's link as it is."""


@dataclass(frozen=True)
class Tracker:
    """Makes e-mails' tracking links: signed with the link secret, served by the gateway
    at `public_url`."""

    secret: str
    public_url: str

    def pixel_url(self, message_id: str) -> str:
        token = sign_tracking(self.secret, TrackingClaims(message_id))
        return link_url(self.public_url, OPEN_PIXEL_PATH, token)

    def click_url(self, message_id: str, target: str) -> str | None:
        """The tracked link to `target`, or None when it is not tracked: not a web address, one
        of the platform's own pages, or so long that its token would not be read."""
        if self.is_own(target) or not is_web_address(target):
            return None
        token = sign_tracking(self.secret, TrackingClaims(message_id, target))
        if len(token) > MAX_TRACKING_TOKEN_LENGTH:
            return None
        return link_url(self.public_url, CLICK_PATH, token)

    def is_own(self, url: str) -> bool:
        """Whether the URL is one of the gateway's pages (preference centre, unsubscribe, a
        tracking link already)."""
        return url.startswith(self.public_url.rstrip("/") + "/")


def track_email(
    text: str, body: str | None, message_id: str, tracker: Tracker
) -> tuple[str, str | None]:
    """An e-mail's text and HTML parts, tracked. Each target is signed once however often the
    message links it (a signature costs about 75 µs, more than the rest of the rewriting)."""
    signed: dict[str, str | None] = {}

    def click(target: str) -> str | None:
        if target not in signed:
            signed[target] = tracker.click_url(message_id, target)
        return signed[target]

    tracked_body = None if body is None else track_html(body, tracker.pixel_url(message_id), click)
    return track_text(text, click), tracked_body


def track_html(body: str, pixel_url: str, click: Click) -> str:
    """The HTML part with its anchors' links made by `click` (those it leaves alone as they
    were) and the open pixel at the end of its body."""

    def tracked(anchor: re.Match[str]) -> str:
        value = next(v for v in anchor.groups()[1:] if v is not None)
        url = click(html.unescape(value))
        if url is None:
            return anchor.group(0)
        return f'{anchor.group(1)}"{html.escape(url, quote=True)}"'

    pixel = (
        f'<img src="{html.escape(pixel_url, quote=True)}" width="1" '
        'height="1" alt="" style="display:block;border:0;width:1px;height:1px">'
    )
    rewritten = _ANCHOR_HREF.sub(tracked, body)
    ends = list(_BODY_END.finditer(rewritten))
    if not ends:
        return rewritten + pixel
    at = ends[-1].start()
    return rewritten[:at] + pixel + rewritten[at:]


def track_text(body: str, click: Click) -> str:
    """The plain-text part with its web addresses made by `click` (a sentence's final
    punctuation stays outside the link)."""

    def tracked(found: re.Match[str]) -> str:
        url = found.group(0).rstrip(_TRAILING)
        link = click(url)
        return found.group(0) if link is None else link + found.group(0)[len(url) :]

    return _TEXT_URL.sub(tracked, body)
