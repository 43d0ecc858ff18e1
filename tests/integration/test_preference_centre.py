"""The preference centre and one-click unsubscribe, through the running gateway: a real browser
(headless Chromium from Debian, driven by selenium) changes a customer's set-up and consents,
and the events land on crm.preferences; plain HTTP shows what links and forms are refused, and
that only an RFC 8058 POST unsubscribes."""

from __future__ import annotations

import html as htmllib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from crm_shared.runtime.links import LinkClaims, link_url, sign_link
from tests.integration.helpers import (
    create_api_key,
    eventually,
    gateway_url,
    read_topic,
    service_auth,
    unique,
)

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def _link(
    platform: dict[str, str], path: str, claims: LinkClaims, signed_at: datetime | None = None
) -> str:
    secret = platform["CRM_LINK_SECRET"]
    return link_url(gateway_url(platform), path, sign_link(secret, claims, now=signed_at))


def _events_of(platform: dict[str, str], customer_id: str) -> list[dict[str, Any]]:
    """Every event on crm.preferences about the customer, in log order."""
    records = read_topic(platform["CRM_KAFKA_BOOTSTRAP"], "crm.preferences")
    return [json.loads(r.value) for r in records if r.key == customer_id.encode()]


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--lang=en"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _type(browser: webdriver.Chrome, name: str, text: str) -> None:
    field = browser.find_element(By.NAME, name)
    field.clear()
    field.send_keys(text)


def _wait_for(browser: webdriver.Chrome, element_id: str) -> None:
    """Wait for the page with this element; fail with the page's text when another one came."""
    try:
        WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.ID, element_id))
    except TimeoutException:
        page = browser.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"no #{element_id} on {browser.current_url}:\n{page}") from None


def _tick(browser: webdriver.Chrome, name: str, ticked: bool = True) -> None:
    box = browser.find_element(By.NAME, name)
    if box.is_selected() != ticked:
        box.click()


def test_a_customer_changes_channels_quiet_hours_and_consent_in_a_browser(
    platform: dict[str, str], browser: webdriver.Chrome
) -> None:
    customer = unique("centre-browser")
    claims = LinkClaims(customer, message_id="newsletter-42")
    link = _link(platform, "/preferences", claims)
    browser.get(link)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Your contact preferences"
    # Nothing is stored for this customer: an empty form.
    assert not browser.find_element(By.NAME, "email.enabled").is_selected()

    Select(browser.find_element(By.NAME, "timezone")).select_by_value("Europe/Berlin")
    _tick(browser, "sms.enabled")
    _type(browser, "sms.rank", "1")
    _type(browser, "sms.address", "+49 151 2345678")
    _tick(browser, "email.enabled")
    _type(browser, "email.rank", "2")
    _type(browser, "email.address", "ann@example.com")
    _type(browser, "email.quiet_start", "21:30")
    _type(browser, "email.quiet_end", "07:00")
    _type(browser, "email.max_per_week", "3")
    _type(browser, "sms.paused_until", "2099-01-15")
    _tick(browser, "consent.marketing.email")
    _tick(browser, "consent.personalisation.all")
    browser.find_element(By.ID, "save").click()
    _wait_for(browser, "done")
    summary = browser.find_element(By.ID, "summary").text
    assert "SMS, E-mail" in summary and "Yes to marketing messages by E-mail" in summary

    events = _events_of(platform, customer)
    assert [e["type"] for e in events] == [
        "crm.channel_preference.set.v2",
        "crm.consent.recorded.v2",
        "crm.consent.recorded.v2",
    ]
    assert {e["source"] for e in events} == {"gateway-service"}
    assert events[0]["data"] == {
        "timezone": "Europe/Berlin",
        "channels": [
            {
                "channel": "sms",
                "address": "+49 151 2345678",
                "quiet_hours": None,
                "max_per_day": None,
                "max_per_week": None,
                "paused_until": "2099-01-14T23:00:00Z",  # midnight in Berlin (CET)
            },
            {
                "channel": "email",
                "address": "ann@example.com",
                "quiet_hours": {"start": "21:30", "end": "07:00", "timezone": "Europe/Berlin"},
                "max_per_day": None,
                "max_per_week": 3,
                "paused_until": None,
            },
        ],
    }
    marketing, personalisation = (e["data"] for e in events[1:])
    assert (marketing["purpose"], marketing["channel"], marketing["state"]) == (
        "marketing",
        "email",
        "granted",
    )
    assert marketing["capture_method"] == "preference_centre"
    assert marketing["wording_version"]
    assert "link from message newsletter-42" in marketing["evidence"]
    assert (personalisation["purpose"], personalisation["channel"]) == ("personalisation", None)

    # The broadcast service folds what was published: the page, opened again, shows it stored.
    def stored(page: webdriver.Chrome) -> bool:
        page.get(link)
        return bool(page.find_element(By.NAME, "email.enabled").is_selected())

    WebDriverWait(browser, 120, poll_frequency=1).until(stored)
    shown = {
        name: browser.find_element(By.NAME, name).get_attribute("value")
        for name in (
            "sms.rank",
            "sms.address",
            "sms.paused_until",
            "email.rank",
            "email.quiet_start",
        )
    }
    assert shown == {
        "sms.rank": "1",
        "sms.address": "+49 151 2345678",
        "sms.paused_until": "2099-01-15",  # the day chosen, in the customer's own time zone
        "email.rank": "2",
        "email.quiet_start": "21:30",
    }
    assert (
        Select(browser.find_element(By.NAME, "timezone")).first_selected_option.get_attribute(
            "value"
        )
        == "Europe/Berlin"
    )
    ticked = {
        name: browser.find_element(By.NAME, name).is_selected()
        for name in (
            "consent.marketing.email",
            "consent.marketing.sms",
            "consent.personalisation.all",
        )
    }
    assert ticked == {
        "consent.marketing.email": True,
        "consent.marketing.sms": False,
        "consent.personalisation.all": True,
    }


def test_the_browser_shows_problems_and_publishes_nothing_until_they_are_fixed(
    platform: dict[str, str], browser: webdriver.Chrome
) -> None:
    customer = unique("centre-invalid")
    browser.get(_link(platform, "/preferences", LinkClaims(customer)))
    _tick(browser, "email.enabled")
    _type(browser, "email.address", "ann at example")
    _type(browser, "email.max_per_day", "5000")
    browser.find_element(By.ID, "save").click()
    _wait_for(browser, "problems")
    assert "not an e-mail address" in browser.find_element(By.ID, "email.address-problem").text
    assert "1000" in browser.find_element(By.ID, "email.max_per_day-problem").text
    # What the customer typed is kept, so they fix it rather than start again.
    assert browser.find_element(By.NAME, "email.address").get_attribute("value") == "ann at example"
    assert _events_of(platform, customer) == []

    _type(browser, "email.address", "ann@example.com")
    _type(browser, "email.max_per_day", "2")
    browser.find_element(By.ID, "save").click()
    _wait_for(browser, "done")
    [event] = _events_of(platform, customer)
    assert event["data"]["channels"][0]["max_per_day"] == 2


def test_the_unsubscribe_button_of_the_page_unsubscribes(
    platform: dict[str, str], browser: webdriver.Chrome
) -> None:
    customer = unique("centre-button")
    claims = LinkClaims(customer, purpose="marketing", channel="email", message_id="m-7")
    browser.get(_link(platform, "/unsubscribe", claims))
    assert _events_of(platform, customer) == []  # the page alone changes nothing
    browser.find_element(By.ID, "unsubscribe").click()
    _wait_for(browser, "done")
    [event] = _events_of(platform, customer)
    assert event["data"]["state"] == "revoked"


async def test_the_page_shows_what_the_broadcast_service_stored(platform: dict[str, str]) -> None:
    customer = unique("centre-stored")
    key = create_api_key(platform, "centre", "events:write", "web-site")
    events = [
        {
            "specversion": "1.0",
            "id": unique("pref"),
            "source": "web-site",
            "type": event_type,
            "subject": customer,
            "time": "2026-01-05T10:00:00Z",
            "data": data,
        }
        for event_type, data in (
            ("crm.channel_preference.set.v1", {"channels": ["sms", "email"]}),
            ("crm.consent.granted.v1", {"purpose": "marketing", "channel": "sms"}),
        )
    ]
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(
            f"{gateway_url(platform)}/v1/events",
            json={"events": events},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert answer.json()["accepted"] == 2, answer.text
        broadcast = f"http://127.0.0.1:{platform['CRM_BROADCAST_API_PORT']}"
        await eventually(
            lambda: client.get(
                f"{broadcast}/customers/{customer}/preferences", headers=service_auth(platform)
            ),
            lambda r: r.status_code == 200 and len(r.json()["consents"]) == 1,
            what="the broadcast service to fold the preferences",
        )
        page = await client.get(_link(platform, "/preferences", LinkClaims(customer)))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "same-origin"
    html = page.text
    assert 'name="sms.rank" id="sms.rank" value="1"' in html
    assert 'name="email.rank" id="email.rank" value="2"' in html
    assert 'id="consent.marketing.sms" aria-label="marketing by SMS" checked' in html
    assert 'id="consent.marketing.email" aria-label="marketing by E-mail">' in html

    # Sent back with the SMS consent unticked and a bad address: the page comes back as the
    # customer left it, the box still unticked, and nothing is published.
    shown_field = re.search(r'name="shown" value="([^"]*)"', html)
    assert shown_field is not None
    shown = htmllib.unescape(shown_field[1])
    form = {name: value for name, value in json.loads(shown).items() if value}
    del form["consent.marketing.sms"]
    form |= {"token": page.url.params["token"], "shown": shown, "email.address": "nobody"}
    async with httpx.AsyncClient(timeout=10) as client:
        again = await client.post(str(page.url), data=form)
    assert again.status_code == 422
    assert 'id="consent.marketing.sms" aria-label="marketing by SMS">' in again.text
    assert 'value="nobody"' in again.text
    assert [e["source"] for e in _events_of(platform, customer)] == ["web-site", "web-site"]


def test_an_expired_altered_or_missing_link_gets_a_page_saying_so(
    platform: dict[str, str],
) -> None:
    customer = unique("centre-link")
    long_ago = datetime.now(UTC) - timedelta(days=61)
    expired = _link(platform, "/preferences", LinkClaims(customer), signed_at=long_ago)
    altered = _link(platform, "/preferences", LinkClaims(customer))[:-3] + "AAA"
    with httpx.Client(timeout=10) as client:
        for url, status, words in (
            (expired, 403, "expired"),
            (altered, 403, "not valid"),
            (f"{gateway_url(platform)}/preferences", 400, "incomplete"),
            (expired.replace("/preferences", "/unsubscribe"), 403, "expired"),
        ):
            answer = client.get(url)
            assert answer.status_code == status, url
            assert answer.headers["content-type"].startswith("text/html")
            assert words in answer.text
        posted = client.post(expired.replace("/preferences", "/unsubscribe"), data=ONE_CLICK)
        assert posted.status_code == 403
    assert _events_of(platform, customer) == []


def test_opening_an_unsubscribe_link_publishes_nothing(platform: dict[str, str]) -> None:
    customer = unique("centre-prefetch")
    url = _link(platform, "/unsubscribe", LinkClaims(customer, purpose="marketing"))
    with httpx.Client(timeout=10) as client:
        for _ in range(3):  # a mail scanner fetches links, sometimes more than once
            answer = client.get(url)
            assert answer.status_code == 200
            assert "marketing messages on every channel" in answer.text
        wrong_body = client.post(url, data={"List-Unsubscribe": "Yes"})
        assert wrong_body.status_code == 400
    assert _events_of(platform, customer) == []


def test_one_click_unsubscribe_publishes_one_revoke_and_a_repeat_has_the_same_id(
    platform: dict[str, str],
) -> None:
    customer = unique("centre-one-click")
    claims = LinkClaims(customer, purpose="marketing", channel="email", message_id="msg-1")
    url = _link(platform, "/unsubscribe", claims)
    with httpx.Client(timeout=10) as client:
        first = client.post(url, data=ONE_CLICK)  # as a mail provider sends it
        assert (first.status_code, first.content) == (200, b"")
        [event] = _events_of(platform, customer)
        assert event["type"] == "crm.consent.recorded.v2"
        assert event["data"] == {
            "purpose": "marketing",
            "channel": "email",
            "state": "revoked",
            "capture_method": "unsubscribe_link",
            "wording_version": None,
            "evidence": event["data"]["evidence"],
        }
        assert event["data"]["evidence"].startswith(
            "one-click unsubscribe, link from message msg-1"
        )
        # RFC 8058 also allows multipart/form-data.
        again = client.post(url, files={"List-Unsubscribe": (None, "One-Click")})
        assert again.status_code == 200
    first_event, repeat = _events_of(platform, customer)
    assert repeat["id"] == first_event["id"]  # the fold applies it once


def test_a_form_from_another_site_or_for_another_link_is_refused(platform: dict[str, str]) -> None:
    customer = unique("centre-csrf")
    url = _link(platform, "/preferences", LinkClaims(customer))
    token = url.rsplit("token=", 1)[1]
    with httpx.Client(timeout=10) as client:
        form = {"token": httpx.QueryParams(f"t={token}")["t"], "consent.service.email": "on"}
        cross_site = client.post(url, data=form, headers={"Origin": "https://evil.example"})
        assert cross_site.status_code == 403
        other_link = client.post(url, data={**form, "token": "another"})
        assert other_link.status_code == 403
        assert "does not belong" in other_link.text
    assert _events_of(platform, customer) == []
