"""Rendering a campaign's templates for one recipient, with their signed links; an e-mail's
web links and open pixel are tracked (broadcast_service.tracking).

Pure apart from the links' signing time (a link is dated when it is signed): the templates were
checked when the campaign was defined (crm_shared.contracts.message_templates); rendering uses
the same sandboxed environments. Only the variables a template uses are computed, so a
template without links signs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from broadcast_service.tracking import Tracker, track_email
from crm_shared.contracts.events import Channel, MessageTemplate
from crm_shared.contracts.message_templates import compile_template, referenced_variables
from crm_shared.runtime.links import LinkClaims, link_url, sign_link

PREFERENCE_CENTRE_PATH = "/preferences"
UNSUBSCRIBE_PATH = "/unsubscribe"
"""Where the gateway serves the preference centre and one-click unsubscribe."""


class LinksUnavailable(RuntimeError):
    """A template asks for a signed link but no link secret is configured."""


@dataclass(frozen=True)
class Links:
    """How links in messages are made: the secret they are signed with (CRM_LINK_SECRET), the
    public address of the gateway that serves them (CRM_PUBLIC_URL), and whether e-mails'
    opens and clicks are tracked (CRM_BROADCAST_EMAIL_TRACKING)."""

    secret: str | None
    public_url: str
    tracking: bool = True

    def _signed(self, path: str, claims: LinkClaims) -> str:
        if self.secret is None:
            raise LinksUnavailable("set CRM_LINK_SECRET to put signed links in messages")
        return link_url(self.public_url, path, sign_link(self.secret, claims))

    def preference_centre(self, customer_id: str) -> str:
        return self._signed(PREFERENCE_CENTRE_PATH, LinkClaims(customer_id))

    def unsubscribe(self, customer_id: str, purpose: str, channel: str, message_id: str) -> str:
        """Withdraws consent to this purpose on this channel (RFC 8058 one-click)."""
        return self._signed(UNSUBSCRIBE_PATH, LinkClaims(customer_id, purpose, channel, message_id))

    def tracker(self) -> Tracker | None:
        """What tracks e-mails' opens and clicks; None when tracking is off or nothing can sign
        (tracking is never a reason to hold a message back)."""
        if not self.tracking or self.secret is None:
            return None
        return Tracker(self.secret, self.public_url)


@dataclass(frozen=True)
class Personalisation:
    """What one recipient's message may say: see message_templates.TEMPLATE_VARIABLES."""

    customer_id: str
    name: str | None
    campaign: str
    purpose: str
    channel: str
    message_id: str
    recommendations: Sequence[object]
    new_products: Sequence[object]
    """Products with product_id, description and reason (attributes or keys)."""


@dataclass(frozen=True)
class RenderedMessage:
    subject: str | None
    text: str
    html: str | None


@lru_cache(maxsize=64)
def _variables(subject: str | None, text: str, html: str | None) -> frozenset[str]:
    return referenced_variables(*(s for s in (subject, text, html) if s is not None))


def render(template: MessageTemplate, who: Personalisation, links: Links) -> RenderedMessage:
    """The message for one recipient; raises what the template raises (the sender cancels it)."""
    used = _variables(template.subject, template.text, template.html)
    context: dict[str, Any] = {
        "customer_id": who.customer_id,
        "name": who.name,
        "campaign": who.campaign,
        "recommendations": who.recommendations,
        "new_products": who.new_products,
    }
    if "preference_centre_url" in used:
        context["preference_centre_url"] = links.preference_centre(who.customer_id)
    if "unsubscribe_url" in used:
        context["unsubscribe_url"] = links.unsubscribe(
            who.customer_id, who.purpose, who.channel, who.message_id
        )
    rendered = RenderedMessage(
        subject=None
        if template.subject is None
        else compile_template(template.subject, False).render(context),
        text=compile_template(template.text, False).render(context),
        html=None
        if template.html is None
        else compile_template(template.html, True).render(context),
    )
    tracker = links.tracker() if who.channel == Channel.EMAIL else None
    return rendered if tracker is None else tracked(rendered, who.message_id, tracker)


def tracked(message: RenderedMessage, message_id: str, tracker: Tracker) -> RenderedMessage:
    """The e-mail with its web links through the click redirect and, in HTML, the open pixel."""
    text, html = track_email(message.text, message.html, message_id, tracker)
    return RenderedMessage(subject=message.subject, text=text, html=html)
