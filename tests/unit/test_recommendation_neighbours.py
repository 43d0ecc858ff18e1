"""The neighbour job's incremental step (recommendation_service.neighbours), pure: after any
sequence of purchases and refunds, refreshing only the lists the changed products can touch
serves exactly the lists a whole recomputation (`models.similar_products`) gives, and every
stored list is the exact start of its whole list, however much of its reserve is left."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest

from recommendation_service.models import kept_similar_products, similar_products
from recommendation_service.neighbours import (
    CoBuyers,
    ComputedRows,
    KeptBuyers,
    Lists,
    computed_rows,
    kept_buyers,
    kept_goods,
    lists_to_merge,
    merged_lists,
    pairs,
    rank,
    with_buyers,
)
from tests.similar_products import assert_serves


class Catalogue:
    """Who keeps what, and the stored lists, in memory: the job's reads and writes without SQL."""

    def __init__(self, served: int, reserve: int = 0) -> None:
        self.served = served
        self.capacity = served + reserve
        self.kept: dict[str, set[str]] = defaultdict(set)
        self.stored: Lists = {}

    def co_buyers_of(self, products: list[str]) -> list[CoBuyers]:
        """What `store.co_buyers_of` reads: per product and other good, the customers who kept
        both, and both goods' buyers."""
        buyers: dict[str, int] = defaultdict(int)
        shared: dict[tuple[str, str], int] = defaultdict(int)
        for goods in self.kept.values():
            for product in goods:
                buyers[product] += 1
                if product in products:
                    for other in goods - {product}:
                        shared[product, other] += 1
        return [(p, o, co, buyers[p], buyers[o]) for (p, o), co in shared.items()]

    def refresh(self, marked: list[str]) -> tuple[int, int]:
        """One incremental run, as the worker's; returns (lists merged, lists computed in full)."""
        rows = computed_rows(self.co_buyers_of(marked), marked, self.capacity, True)
        naming = {p for p, entries in self.stored.items() if any(e[0] in marked for e in entries)}
        boundaries = {  # what store.last_of_long_lists reads
            p: sorted(entries, key=rank)[-1]
            for p, entries in self.stored.items()
            if len(entries) >= self.served
        }
        to_merge = lists_to_merge(boundaries, naming, rows)
        merged = merged_lists(self.stored, to_merge, rows, self.served, self.capacity)
        lists = {**merged.lists, **rows.lists}
        full = computed_rows(
            self.co_buyers_of(merged.unsettled), merged.unsettled, self.capacity, False
        )
        lists.update(full.lists)
        for product, entries in lists.items():
            self.stored[product] = entries
        return len(merged.lists), len(merged.unsettled) + len(rows.lists)

    def check(self, step: int) -> None:
        kept = [(c, p) for c, goods in self.kept.items() for p in goods]
        assert_serves(pairs(self.stored), similar_products(kept, self.capacity), self.served, step)


@pytest.mark.parametrize(
    ("seed", "served", "reserve"),
    [(1, 2, 0), (2, 3, 0), (3, 5, 0), (4, 50, 0), (5, 3, 2), (6, 5, 4)],
)
def test_refreshing_the_marked_products_serves_a_whole_recomputation(
    seed: int, served: int, reserve: int
) -> None:
    rng = random.Random(seed)
    products = [f"P{n:02}" for n in range(30)]
    catalogue = Catalogue(served, reserve)
    merged = computed = 0
    for step in range(150):
        # a few customers change at once: buy (skewed towards popular goods) or return all of one
        changed: set[str] = set()
        for _ in range(rng.randint(1, 3)):
            customer = f"C{rng.randrange(25)}"
            goods = catalogue.kept[customer]
            if goods and rng.random() < 0.3:
                product = rng.choice(sorted(goods))
                goods.discard(product)
            else:
                product = products[min(int(rng.expovariate(0.15)), len(products) - 1)]
                if product in goods:
                    continue
                goods.add(product)
            changed.add(product)
        if not changed:
            continue
        done = catalogue.refresh(sorted(changed))
        merged, computed = merged + done[0], computed + done[1]
        catalogue.check(step)
        if not reserve:
            assert pairs(catalogue.stored) == similar_products(
                [(c, p) for c, goods in catalogue.kept.items() for p in goods], served
            ), f"step {step}"
    assert merged > 0 and computed > 0  # both ways of bringing a list up to date were taken


def test_the_reserve_spares_a_full_computation_when_a_product_leaves_a_full_list() -> None:
    # A's list serves 1 and keeps 1 more: B (2 shared buyers of 2 each), then C; B's buyers
    # return it, so C moves up from the reserve and A's row is not computed again
    catalogue = Catalogue(served=1, reserve=1)
    catalogue.kept.update(
        {"C1": {"A", "B"}, "C2": {"A", "B"}, "C3": {"A", "C"}, "C4": {"C"}, "C5": {"A", "D"}}
    )
    catalogue.refresh(["A", "B", "C", "D"])
    assert [entry[0] for entry in catalogue.stored["A"]] == ["B", "D"]
    catalogue.kept["C1"].discard("B")
    catalogue.kept["C2"].discard("B")
    merged, computed = catalogue.refresh(["B"])
    assert [entry[0] for entry in catalogue.stored["A"]] == ["D"]
    assert (merged, computed) == (1, 1)  # A merged; only B's own row computed
    catalogue.check(0)


def test_a_product_that_leaves_a_full_list_lets_the_next_one_in() -> None:
    # A's list keeps 1: B (2 shared buyers of 2 each) before C; when B's buyers return it, C enters
    catalogue = Catalogue(served=1)
    catalogue.kept.update({"C1": {"A", "B"}, "C2": {"A", "B"}, "C3": {"A", "C"}, "C4": {"C"}})
    catalogue.refresh(["A", "B", "C"])
    assert catalogue.stored["A"] == [("B", 2, pytest.approx(2 / 6**0.5))]
    catalogue.kept["C1"].discard("B")
    catalogue.kept["C2"].discard("B")
    catalogue.refresh(["B"])
    assert [entry[0] for entry in catalogue.stored["A"]] == ["C"]
    assert catalogue.stored["B"] == []
    catalogue.check(0)


def test_the_marked_rows_and_their_crossing_entries_share_one_value() -> None:
    co_buyers = [("A", "B", 1, 2, 1), ("A", "C", 1, 2, 3)]
    rows: ComputedRows = computed_rows(co_buyers, ["A"], neighbours=5, crossing=True)
    assert [entry[0] for entry in rows.lists["A"]] == ["B", "C"]  # 1/sqrt(2) before 1/sqrt(6)
    assert rows.crossing == {
        "B": [("A", 1, rows.lists["A"][0][2])],
        "C": [("A", 1, rows.lists["A"][1][2])],
    }


def test_kept_buyers_updated_from_the_changed_goods_compute_a_whole_recomputation() -> None:
    """A whole-catalogue run from what the last one read, with the buyers of the goods changed
    since read again (a good nobody keeps any more: not read), computes the same lists as one
    from every pair kept, whatever order customers were first read in; customers who return
    everything are dropped, and new ones take their numbers."""
    rng = random.Random(9)
    products = [f"P{n:02}" for n in range(25)] + ["a1", "B2"]
    kept: dict[str, set[str]] = defaultdict(set)
    last = KeptBuyers({}, {}, np.zeros(0, dtype=np.intp))
    keeping: set[str] = set()
    most = 0
    for step in range(120):
        changed: set[str] = set()
        for _ in range(rng.randint(1, 4)):
            goods = kept[f"C{rng.randrange(30)}"]
            product = rng.choice(products)
            goods.symmetric_difference_update({product})
            changed.add(product)
        if step % 5 == 4:  # a customer returns everything
            goods = kept[f"C{rng.randrange(30)}"]
            changed |= goods
            goods.clear()
        buyers: dict[str, list[str]] = defaultdict(list)
        for customer, goods in kept.items():
            for product in goods:
                buyers[product].append(customer)
        read = {product: buyers[product] for product in changed if product in buyers}
        last = with_buyers(last, read if step else buyers, changed)
        pairs_kept = [(c, p) for c, goods in kept.items() for p in goods]
        assert kept_similar_products(kept_goods(last), 4) == similar_products(pairs_kept, 4), step
        before, keeping = keeping, {customer for customer, goods in kept.items() if goods}
        most = max(most, len(before | keeping))
        assert set(last.customers) == keeping, step  # who keeps nothing is dropped
        assert len(set(last.customers.values())) == len(keeping)
        assert len(last.held) <= most  # numbers are reused: at most one run's customers
    again = kept_buyers(kept_goods(last))  # what a read of every pair gives: numbered alike
    assert again.customers == last.customers
    assert {good: list(buyers) for good, buyers in again.goods.items()} == {
        good: list(buyers) for good, buyers in last.goods.items()
    }
    assert again.held.tolist() == last.held.tolist()


def test_a_customer_who_keeps_nothing_is_dropped_and_their_number_reused() -> None:
    """What the worker keeps grows with who keeps goods, not with every customer ever read: a
    customer whose last good is returned leaves, and the next new customer takes their number."""
    first = with_buyers(
        KeptBuyers({}, {}, np.zeros(0, dtype=np.intp)),
        {"JAM": ["ann", "bob"], "TEA": ["bob"]},
        ["JAM", "TEA"],
    )
    assert first.customers == {"ann": 0, "bob": 1}
    returned = with_buyers(first, {"JAM": ["bob"]}, ["JAM"])  # ann returned her jam
    assert returned.customers == {"bob": 1}
    assert returned.held.tolist() == [0, 2]
    joined = with_buyers(returned, {"MUG": ["cat", "dan"]}, ["MUG"])
    assert joined.customers == {"bob": 1, "cat": 0, "dan": 2}
    assert joined.held.tolist() == [1, 2, 1]
    assert kept_goods(joined).customers == ["cat", "bob", "dan"]
