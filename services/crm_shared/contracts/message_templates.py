"""Message templates of campaigns: Jinja2 in its sandbox, with only the variables we provide.

A campaign's templates are checked where its definition is validated (the gateway, and every
worker that decodes the event), so a template that does not compile or names a variable we do
not provide is refused when it is defined, not found while a million messages are planned. The
same environments render the messages (broadcast_service.templates). HTML is autoescaped;
an undefined name is an error (StrictUndefined), never an empty string in a customer's mail.
"""

from __future__ import annotations

from functools import lru_cache

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment

TEMPLATE_VARIABLES = frozenset(
    {
        "customer_id",
        "name",
        "campaign",
        "recommendations",
        "new_products",
        "preference_centre_url",
        "unsubscribe_url",
    }
)
"""What a template may use: the recipient, the campaign's name, their recommended and new
products (each with product_id, description and reason), and their signed links."""


@lru_cache(maxsize=2)
def environment(html: bool) -> SandboxedEnvironment:
    """The sandbox templates run in; HTML output is autoescaped."""
    return SandboxedEnvironment(
        autoescape=html, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )


@lru_cache(maxsize=256)
def compile_template(source: str, html: bool) -> Template:
    """The compiled template; ValueError says what is wrong with it, for people."""
    env = environment(html)
    try:
        unknown = meta.find_undeclared_variables(env.parse(source)) - TEMPLATE_VARIABLES
    except TemplateSyntaxError as error:
        raise ValueError(f"template syntax error on line {error.lineno}: {error.message}") from None
    if unknown:
        known = ", ".join(sorted(TEMPLATE_VARIABLES))
        raise ValueError(f"unknown template variable(s) {sorted(unknown)}; known: {known}")
    return env.from_string(source)


def referenced_variables(*sources: str) -> frozenset[str]:
    """The variables these (valid) templates use: the planner computes only those."""
    env = environment(False)
    return frozenset().union(*(meta.find_undeclared_variables(env.parse(s)) for s in sources))
