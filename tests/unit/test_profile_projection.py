"""Profile projection: last-writer-wins fields and order-independent purchase totals."""

from __future__ import annotations

from decimal import Decimal

from profile_service.projection import evolve_customers, identifier_claims, purchase_deltas
from tests.unit.events_factory import at, event, order, refund


def _registered(customer: str, minutes: float, **data: object):
    return event("crm.customer.registered.v1", customer, dict(data), minutes=minutes)


def _updated(customer: str, minutes: float, **data: object):
    return event("crm.customer.updated.v1", customer, dict(data), minutes=minutes)


def test_registration_then_update_keeps_the_newest_values() -> None:
    changed = evolve_customers(
        {},
        [
            _registered("C1", 0, name="Ann", country="UK", identifiers={"pos": "77"}),
            _updated("C1", 5, country="France", attributes={"tier": "gold"}),
        ],
    )
    record = changed["C1"]
    assert record.contact == {"name": "Ann", "country": "France"}
    assert record.attributes == {"tier": "gold"}
    assert record.identifiers == {"pos": "77"}
    assert record.registered_at == at(0)
    assert record.updated_at == at(5)


def test_a_late_update_does_not_overwrite_a_newer_field_but_sets_untouched_ones() -> None:
    newer = _updated("C1", 10, country="Spain")
    late = _updated("C1", 3, country="Italy", email="a@b.c")
    record = evolve_customers({}, [newer, late])["C1"]
    assert record.contact["country"] == "Spain"
    assert record.contact["email"] == "a@b.c"
    assert record.updated_at == at(10)


def test_field_order_of_arrival_does_not_matter() -> None:
    events = [
        _registered("C1", 0, name="Ann"),
        _updated("C1", 2, name="Anne", attributes={"tier": "silver"}),
        _updated("C1", 4, attributes={"tier": "gold"}),
    ]
    forward = evolve_customers({}, events)["C1"]
    backward = evolve_customers({}, list(reversed(events)))["C1"]
    assert forward.contact == backward.contact == {"name": "Anne"}
    assert forward.attributes == backward.attributes == {"tier": "gold"}


def test_an_earlier_stored_record_is_the_starting_point() -> None:
    stored = evolve_customers({}, [_registered("C1", 0, name="Ann")])
    changed = evolve_customers(stored, [_updated("C1", 1, phone="+44 1")])
    assert changed["C1"].contact == {"name": "Ann", "phone": "+44 1"}


def test_purchase_totals_net_refunds_and_track_first_and_last_purchase() -> None:
    deltas = purchase_deltas(
        [
            order("C1", "O1", ("P1", 2, "2.50"), ("P2", 1, "10"), minutes=30),
            order("C1", "O2", ("P1", 1, "2.50"), minutes=0),
            refund("C1", "R1", ("P2", 1, "10"), minutes=40),
            order("C2", "O3", ("P3", 4, "1"), minutes=5),
        ]
    )
    c1 = deltas["C1"]
    assert (c1.orders, c1.refunds, c1.items) == (2, 1, 3)
    assert c1.gross_revenue == Decimal("17.50")
    assert c1.refunded == Decimal("10")
    assert (c1.first_purchase_at, c1.last_purchase_at) == (at(0), at(30))
    assert deltas["C2"].gross_revenue == Decimal("4")


def test_customer_events_do_not_touch_purchase_totals() -> None:
    assert purchase_deltas([_registered("C1", 0, name="Ann")]) == {}


def test_identifier_claims_carry_the_event_time_that_set_each_identifier() -> None:
    record = evolve_customers(
        {},
        [
            _registered("C1", 0, identifiers={"pos": "77", "email": "a@b.c"}),
            _updated("C1", 5, identifiers={"pos": "78"}),
        ],
    )["C1"]
    claims = sorted(identifier_claims(record), key=lambda c: c.system)
    assert [(c.system, c.value, c.customer_id, c.claimed_at) for c in claims] == [
        ("email", "a@b.c", "C1", at(0)),
        ("pos", "78", "C1", at(5)),  # the replaced card "77" is no longer claimed
    ]


def test_each_field_keeps_the_source_and_time_that_set_it() -> None:
    shop = event("crm.customer.registered.v1", "C1", {"email": "a@shop"}, minutes=0, source="shop")
    pos = event(
        "crm.customer.updated.v1",
        "C1",
        {"country": "UK", "attributes": {"tier": "gold"}},
        minutes=5,
        source="pos",
    )
    record = evolve_customers({}, [shop, pos])["C1"]
    assert record.field_sources == {"email": "shop", "country": "pos", "attributes.tier": "pos"}
    assert record.field_times["email"] == at(0).isoformat()
    assert record.field_times["attributes.tier"] == at(5).isoformat()


def test_two_sources_setting_a_field_at_the_same_instant_agree_whatever_the_order() -> None:
    """Same event time: the greater source name wins, so a replay in another order (another
    partition interleaving, a rebuild) shows the same value."""
    call_centre = event(
        "crm.customer.updated.v1", "C1", {"phone": "+44 1"}, minutes=3, source="call-centre"
    )
    web = event("crm.customer.updated.v1", "C1", {"phone": "+44 2"}, minutes=3, source="web-site")
    forward = evolve_customers({}, [call_centre, web])["C1"]
    backward = evolve_customers({}, [web, call_centre])["C1"]
    assert forward.contact["phone"] == backward.contact["phone"] == "+44 2"
    assert forward.field_sources["phone"] == backward.field_sources["phone"] == "web-site"
