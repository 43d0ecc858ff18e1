"""Open and click tracking, purely: tracking tokens name the message and the signed target and
nothing else, and a rendered e-mail's web links lead through the click redirect while the
platform's own links stay as they are."""

from __future__ import annotations

import hashlib
import html
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from broadcast_service.campaigns import Addressee, campaign_from, render_for
from broadcast_service.templates import Links
from broadcast_service.tracking import Tracker, track_email, track_html, track_text
from crm_shared.contracts.events import CAMPAIGN_DEFINED
from crm_shared.runtime.links import (
    CLICK_PATH,
    OPEN_PIXEL_PATH,
    InvalidLink,
    LinkClaims,
    TrackingClaims,
    is_web_address,
    read_link,
    read_tracking,
    sign_link,
    sign_tracking,
)
from tests.unit.events_factory import event

SECRET = "a-secret-for-the-tracking-tests"
PUBLIC = "https://crm.example.com"
TRACKER = Tracker(SECRET, PUBLIC)
PIXEL = TRACKER.pixel_url("m-1")


def _click(target: str) -> str | None:
    return TRACKER.click_url("m-1", target)


def _claims_of(url: str) -> tuple[str, TrackingClaims]:
    """The path of a tracking link and what its token says."""
    parts = urlsplit(url)
    (token,) = parse_qs(parts.query)["token"]
    return parts.path, read_tracking(SECRET, token)


def _hrefs(body: str) -> list[str]:
    return [html.unescape(part.split('"', 1)[0]) for part in body.split('href="')[1:]]


def test_a_tracking_token_carries_the_message_and_the_target_back() -> None:
    claims = TrackingClaims("m-1", "https://shop.example/teapot?ref=news&x=1")
    assert read_tracking(SECRET, sign_tracking(SECRET, claims)) == claims
    assert read_tracking(SECRET, sign_tracking(SECRET, TrackingClaims("m-1"))).target is None


def test_tracking_tokens_and_preference_links_do_not_open_each_other() -> None:
    with pytest.raises(InvalidLink, match="not valid"):
        read_link(SECRET, sign_tracking(SECRET, TrackingClaims("m-1", "https://shop.example/")))
    with pytest.raises(InvalidLink, match="not valid"):
        read_tracking(SECRET, sign_link(SECRET, LinkClaims("c-1", message_id="m-1")))


def test_an_altered_or_expired_tracking_token_is_refused() -> None:
    token = sign_tracking(SECRET, TrackingClaims("m-1", "https://shop.example/"))
    elsewhere = sign_tracking(SECRET, TrackingClaims("m-1", "https://evil.example/"))
    forged = ".".join([elsewhere.split(".", 1)[0], *token.split(".")[1:]])
    with pytest.raises(InvalidLink, match="altered"):
        read_tracking(SECRET, forged)
    later = datetime.now(UTC) + timedelta(days=2)
    with pytest.raises(InvalidLink, match="expired"):
        read_tracking(SECRET, token, max_age=timedelta(days=1), now=later)


def test_a_signed_target_that_is_not_a_web_address_is_refused() -> None:
    token = sign_tracking(SECRET, TrackingClaims("m-1", "javascript:alert(1)"))
    with pytest.raises(InvalidLink, match="leads nowhere"):
        read_tracking(SECRET, token)


@pytest.mark.parametrize(
    ("url", "web"),
    [
        ("https://shop.example/a?b=c", True),
        ("HTTP://shop.example", True),
        ("mailto:ann@example.com", False),
        ("https:///no-host", False),
        ("https://shop.example/a\r\nSet-Cookie: x", False),
        ("https://shop.example/thé", True),
        ("https://shop.example/th\u00e9 x", False),
        ("https://shop.example/a\u2028b", False),
        ("//shop.example/", False),
        ("https://[::1", False),
    ],
)
def test_only_absolute_web_addresses_are_tracked_targets(url: str, web: bool) -> None:
    assert is_web_address(url) is web


def test_html_links_lead_through_the_click_redirect_and_the_pixel_closes_the_body() -> None:
    body = (
        "<html><body><p>Hi</p>"
        '<a class="x" href="https://shop.example/teapot?a=1&amp;b=2">teapot</a> '
        "<a href='https://shop.example/cups'>cups</a> "
        '<a href="mailto:help@example.com">mail us</a> <a href="#top">top</a> '
        f'<a href="{PUBLIC}/preferences?token=abc">preferences</a>'
        "</body></html>"
    )
    tracked = track_html(body, PIXEL, _click)
    teapot, cups, mail, top, preferences = _hrefs(tracked.replace("href='", 'href="'))
    assert _claims_of(teapot) == (
        CLICK_PATH,
        TrackingClaims("m-1", "https://shop.example/teapot?a=1&b=2"),
    )
    assert _claims_of(cups)[1].target == "https://shop.example/cups"
    assert (mail, top) == ("mailto:help@example.com", "#top")
    assert preferences == f"{PUBLIC}/preferences?token=abc"
    pixel = tracked.split('<img src="', 1)[1].split('"', 1)[0]
    assert _claims_of(html.unescape(pixel)) == (OPEN_PIXEL_PATH, TrackingClaims("m-1"))
    assert tracked.endswith('height:1px"></body></html>')


def test_html_without_a_body_tag_gets_the_pixel_at_its_end() -> None:
    tracked = track_html("<p>Hello</p>", PIXEL, _click)
    assert tracked.startswith("<p>Hello</p><img src=") and tracked.endswith(">")


def test_text_links_are_tracked_and_keep_the_sentence_around_them() -> None:
    text = (
        "See https://shop.example/teapot. Or (https://shop.example/cups), "
        f"preferences: {PUBLIC}/preferences?token=abc"
    )
    tracked = track_text(text, _click)
    teapot = tracked.split("See ", 1)[1].split(". Or", 1)[0]
    cups = tracked.split("Or (", 1)[1].split("), ", 1)[0]
    assert _claims_of(teapot)[1].target == "https://shop.example/teapot"
    assert _claims_of(cups)[1].target == "https://shop.example/cups"
    assert tracked.endswith(f"preferences: {PUBLIC}/preferences?token=abc")


def test_a_target_linked_twice_is_signed_once_for_both_parts() -> None:
    text, body = track_email(
        "https://shop.example/a https://shop.example/a",
        '<a href="https://shop.example/a">a</a>',
        "m-1",
        TRACKER,
    )
    first, second = text.split(" ")
    assert first == second == _hrefs(body or "")[0]
    assert _claims_of(first) == (CLICK_PATH, TrackingClaims("m-1", "https://shop.example/a"))


def test_a_target_too_long_for_a_token_stays_as_it_is() -> None:
    noise = "".join(hashlib.sha256(str(n).encode()).hexdigest() for n in range(150))
    long_target = f"https://shop.example/{noise}"  # hex compresses by half at most
    assert TRACKER.click_url("m-1", long_target) is None
    assert track_text(long_target, _click) == long_target


def _campaign(**template: Any) -> Any:
    definition = {
        "name": "Spring picks",
        "purpose": "marketing",
        "target": {"customer_ids": ["C1"]},
        "templates": [
            {"channel": "email", "subject": "Hi", **template},
            {"channel": "sms", "text": "Teapots: https://shop.example/teapot"},
        ],
    }
    return campaign_from(event(CAMPAIGN_DEFINED, "spring", definition))


def test_a_rendered_email_is_tracked_and_its_unsubscribe_link_is_not() -> None:
    campaign = _campaign(
        text="Teapots: https://shop.example/teapot\nUnsubscribe: {{ unsubscribe_url }}",
        html='<a href="https://shop.example/teapot">Teapots</a>',
    )
    message = render_for(campaign, "email", Addressee("C1", "Ada"), "m-1", Links(SECRET, PUBLIC))
    tracked_link = message.text.split("Teapots: ", 1)[1].split("\n", 1)[0]
    assert _claims_of(tracked_link) == (
        CLICK_PATH,
        TrackingClaims("m-1", "https://shop.example/teapot"),
    )
    unsubscribe = message.text.rsplit("Unsubscribe: ", 1)[1]
    assert urlsplit(unsubscribe).path == "/unsubscribe"
    assert read_link(SECRET, unquote(unsubscribe.split("token=", 1)[1])).message_id == "m-1"
    assert message.html is not None and OPEN_PIXEL_PATH in message.html
    assert CLICK_PATH in message.html and "https://shop.example/teapot" not in message.html


def test_sms_and_untracked_set_ups_are_left_as_written() -> None:
    campaign = _campaign(text="Teapots: https://shop.example/teapot")
    sms = render_for(campaign, "sms", Addressee("C1", "Ada"), "m-1", Links(SECRET, PUBLIC))
    assert sms.text == "Teapots: https://shop.example/teapot"
    untracked = Links(SECRET, PUBLIC, tracking=False)
    email = render_for(campaign, "email", Addressee("C1", "Ada"), "m-1", untracked)
    assert email.text == "Teapots: https://shop.example/teapot"
