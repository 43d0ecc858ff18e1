"""Gateway customer 360: what each service's answer means, and the view composed from them."""

from __future__ import annotations

import json

import pytest

from gateway_service.composition import (
    CALLS,
    PARTS,
    CustomerUnknown,
    Failed,
    Found,
    MissingPart,
    NotFound,
    Outcome,
    Part,
    answer_label,
    calls,
    compose,
    errored,
    from_response,
    outcomes_of,
    render,
    timed_out,
    unavailable,
)

NAMES = [part.name for part in PARTS]


def _outcomes(**overrides: Outcome) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {name: Found({"part": name}) for name in NAMES}
    outcomes.update(overrides)
    return outcomes


def test_the_parts_and_the_calls_that_fill_them() -> None:
    assert NAMES == ["profile", "timeline", "contact_summary", "preferences", "recommendations"]
    calls = {part.name: (part.service, part.path, dict(part.params)) for part in PARTS}
    assert (
        calls["timeline"]
        == calls["contact_summary"]
        == (
            "interaction",
            "/customers/{customer_id}/overview",
            {"limit": "20"},
        )
    )
    assert calls["preferences"][:2] == ("broadcast", "/customers/{customer_id}/preferences")
    assert calls["recommendations"][0] == "recommendation"
    assert calls["recommendations"][2] == {"limit": "10"}


def test_parts_answered_by_the_same_call_are_asked_once() -> None:
    assert [[part.name for part in group] for group in CALLS] == [
        ["profile"],
        ["timeline", "contact_summary"],
        ["preferences"],
        ["recommendations"],
    ]


def test_the_same_path_with_other_parameters_is_another_call() -> None:
    first = Part("a", "interaction", "/x", {"limit": "1"}, member="a")
    second = Part("b", "interaction", "/x", {"limit": "2"}, member="b")
    assert calls([first, second]) == ((first,), (second,))


def test_one_answer_gives_each_of_its_parts_its_member() -> None:
    timeline, summary = CALLS[1]
    answer = Found({"timeline": {"items": []}, "contact_summary": {"touchpoints": 2}})
    assert outcomes_of((timeline, summary), answer) == {
        "timeline": Found({"items": []}),
        "contact_summary": Found({"touchpoints": 2}),
    }


def test_a_null_member_is_not_found_and_a_member_that_is_no_object_an_error() -> None:
    timeline, summary = CALLS[1]
    outcomes = outcomes_of((timeline, summary), Found({"timeline": [1], "contact_summary": None}))
    assert outcomes == {
        "timeline": Failed("error", "error: timeline in the response is not a JSON object"),
        "contact_summary": NotFound(),
    }


@pytest.mark.parametrize("answer", [NotFound(), timed_out(2.0), errored("HTTP 500")])
def test_a_call_that_fails_or_finds_nothing_leaves_each_of_its_parts_so(answer: Outcome) -> None:
    assert outcomes_of(CALLS[1], answer) == {"timeline": answer, "contact_summary": answer}


def test_a_part_without_a_member_is_the_whole_answer() -> None:
    (profile,) = CALLS[0]
    answer = Found({"customer_id": "C1"}, raw=b'{"customer_id":"C1"}')
    assert outcomes_of((profile,), answer)["profile"] is answer


def test_every_part_found_gives_a_full_view_with_nothing_missing() -> None:
    view = compose("C1", _outcomes())
    assert view.customer_id == "C1"
    assert view.profile == {"part": "profile"}
    assert view.recommendations == {"part": "recommendations"}
    assert view.missing == ()


def test_services_that_are_down_leave_their_parts_empty_with_the_reason() -> None:
    view = compose(
        "C1",
        _outcomes(
            timeline=timed_out(2.0),
            contact_summary=timed_out(2.0),
            recommendations=unavailable("connection refused"),
            preferences=errored("HTTP 500"),
        ),
    )
    assert view.profile == {"part": "profile"}
    assert view.timeline is view.preferences is view.recommendations is None
    assert view.missing == (
        MissingPart("timeline", "timeout after 2.0 s"),
        MissingPart("contact_summary", "timeout after 2.0 s"),
        MissingPart("preferences", "error: HTTP 500"),
        MissingPart("recommendations", "unavailable: connection refused"),
    )


def test_a_part_the_service_does_not_know_is_empty_and_says_not_found() -> None:
    view = compose("C1", _outcomes(preferences=NotFound()))
    assert view.preferences is None
    assert view.missing == (MissingPart("preferences", "not found"),)


def test_a_customer_no_service_knows_is_unknown() -> None:
    with pytest.raises(CustomerUnknown, match="customer 'C9' is unknown"):
        compose("C9", {name: NotFound() for name in NAMES})


def test_not_found_everywhere_reachable_is_not_unknown_while_a_service_is_down() -> None:
    outcomes = _outcomes(**{name: NotFound() for name in NAMES})
    outcomes["profile"] = unavailable("connection refused")
    view = compose("C9", outcomes)
    assert view.profile is None
    assert [m.reason for m in view.missing] == ["unavailable: connection refused"] + [
        "not found"
    ] * 4


def test_recommendations_for_anyone_do_not_make_a_customer_known() -> None:
    outcomes = {name: NotFound() for name in NAMES}
    outcomes["recommendations"] = Found({"strategy": "popular", "items": []})
    with pytest.raises(CustomerUnknown):
        compose("C9", outcomes)


def test_the_view_copies_the_bodies_it_was_given() -> None:
    body = {"name": "Ann"}
    view = compose("C1", _outcomes(profile=Found(body)))
    body["name"] = "changed"
    assert view.profile == {"name": "Ann"}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"a": 1}, Found({"a": 1})),
        (404, {"error": {}}, NotFound()),
        (404, None, NotFound()),
        (500, None, Failed("error", "error: HTTP 500")),
        (503, {"error": {}}, Failed("error", "error: HTTP 503")),
        (422, {"error": {}}, Failed("error", "error: HTTP 422")),
        (200, None, Failed("error", "error: the response is not a JSON object")),
        (200, [1, 2], Failed("error", "error: the response is not a JSON object")),
    ],
)
def test_what_a_service_answer_means(status: int, body: object, expected: Outcome) -> None:
    assert from_response(status, body) == expected
    # An answer passed on undecoded (a timeline page) is counted under the same label.
    assert answer_label(status, isinstance(body, dict)) == expected.label


def test_failure_labels_for_metrics() -> None:
    assert [o.label for o in (timed_out(1.5), unavailable("x"), errored("y"))] == [
        "timeout",
        "unavailable",
        "error",
    ]
    assert timed_out(1.5).reason == "timeout after 1.5 s"
    assert (Found({}).label, NotFound().label) == ("found", "not_found")


def test_the_rendered_view_splices_in_each_part_as_its_service_sent_it() -> None:
    sent = rb'{"customer_id": "C1",  "name": "Ann\u00e9", "total": "10.50"}'
    outcomes = _outcomes(
        profile=from_response(200, json.loads(sent), sent),
        preferences=NotFound(),
        recommendations=timed_out(2.0),
    )
    rendered = render(compose("C1", outcomes))
    assert sent in rendered  # the service's bytes, neither decoded nor encoded again
    assert json.loads(rendered) == {
        "customer_id": "C1",
        "profile": {"customer_id": "C1", "name": "Anné", "total": "10.50"},
        "timeline": {"part": "timeline"},
        "contact_summary": {"part": "contact_summary"},
        "preferences": None,
        "recommendations": None,
        "missing": [
            {"part": "preferences", "reason": "not found"},
            {"part": "recommendations", "reason": "timeout after 2.0 s"},
        ],
    }


def test_the_rendered_view_escapes_what_it_encodes_itself() -> None:
    rendered = render(compose('C"1', _outcomes(timeline=errored('HTTP 500 "bad"'))))
    view = json.loads(rendered)
    assert view["customer_id"] == 'C"1'
    assert view["missing"] == [{"part": "timeline", "reason": 'error: HTTP 500 "bad"'}]
