"""When folding fails for reasons that are not the events' fault, consumption halts instead of
dead-lettering everything; a poison event alone is still dead-lettered."""

from __future__ import annotations

import asyncpg

from crm_shared.runtime.projector import systematic_failure


def test_a_single_poison_event_is_poison_not_a_halt() -> None:
    reason, streak = systematic_failure([None, ValueError("bad"), None], 0, halt_after=3)
    assert reason is None and streak == 0
    reason, streak = systematic_failure([None, None, KeyError("x")], 0, halt_after=3)
    assert reason is None and streak == 1


def test_many_failures_in_a_row_halt_even_across_batches() -> None:
    reason, streak = systematic_failure([KeyError("a"), KeyError("b")], 0, halt_after=3)
    assert reason is None and streak == 2
    reason, streak = systematic_failure([KeyError("c"), None], streak, halt_after=3)
    assert reason == "3 events in a row failed to fold, the last with KeyError: 'c'"
    assert streak == 3


def test_a_schema_that_does_not_fit_the_code_halts_at_once() -> None:
    error = asyncpg.UndefinedColumnError('column "items" does not exist')
    reason, _ = systematic_failure([None, error], 0, halt_after=10)
    assert reason is not None
    assert reason.startswith("the projection's database does not fit its code")
    assert "UndefinedColumnError" in reason


def test_a_success_resets_the_streak() -> None:
    reason, streak = systematic_failure([KeyError("a"), None, KeyError("b")], 0, halt_after=2)
    assert reason is None and streak == 1
