"""metrics.count waits for the block around the transaction: counted when it ends, dropped when
it raises; a nested block (a savepoint) hands its counts to the outer one."""

from __future__ import annotations

import contextlib

import pytest
from prometheus_client import CollectorRegistry, Counter

from crm_shared.runtime.metrics import count, counted_on_commit


def _counter() -> Counter:
    return Counter("things", "Things", registry=CollectorRegistry())


def test_counts_wait_for_the_block_and_outside_one_count_at_once() -> None:
    things = _counter()
    with counted_on_commit():
        count(things, 2)
        assert things._value.get() == 0
    assert things._value.get() == 2
    count(things)
    assert things._value.get() == 3


def test_a_block_that_raises_counts_nothing() -> None:
    things = _counter()
    with pytest.raises(ValueError), counted_on_commit():
        count(things, 5)
        raise ValueError("rolled back")
    assert things._value.get() == 0


@pytest.mark.parametrize(("outer_commits", "counted"), [(True, 1), (False, 0)])
def test_a_nested_block_counts_with_the_outer_one_or_not_at_all(
    outer_commits: bool, counted: int
) -> None:
    things = _counter()
    with contextlib.suppress(ValueError), counted_on_commit():
        with counted_on_commit():
            count(things)
        with pytest.raises(KeyError), counted_on_commit():
            count(things, 10)
            raise KeyError("savepoint rolled back")
        assert things._value.get() == 0
        if not outer_commits:
            raise ValueError("the outer transaction rolled back")
    assert things._value.get() == counted
