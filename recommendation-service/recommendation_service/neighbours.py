"""The neighbour job's incremental step, pure: which similar-product lists a set of marked
products (goods that gained or lost a buyer) can change, and their new lists, whose served part
(the first `served` entries) equals what a recomputation of the whole catalogue
(`models.similar_products`) gives.

Cosine is co(X, Y) / sqrt(n_X n_Y). When X gains or loses a buyer, n_X and co(X, Y) for the
goods Y in that customer's basket change, so X's whole row changes and, in the row of every Y
bought with X (or that listed X), only the entry for X changes. So the marked products' rows are
computed in full from their co-buyer counts, and each other affected product's stored list is
merged with its new entries for the marked products, when they can change it at all.

A stored list is always the exact start of its product's ranking: complete when it has fewer
than `served` entries, otherwise possibly cut off after its last one. A list computed in full
keeps up to `served` + a reserve; a merge that moves an entry past the last one drops it (the
entries hidden behind the last may now rank before it), so the list shortens by one, and only a
list that would fall short of `served` is computed in full again. Without the reserve, every
purchase that pushes a product out of a full list costs that list's whole row: for a product
listed by dozens of bestsellers, seconds.

A whole-catalogue run (marks with many buyers in all) computes every list from who kept which
good. The worker keeps that input between such runs (`KeptBuyers`) and reads again only the
marked goods' buyers: the marks name every good whose buyers changed since the last run.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recommendation_service.models import KeptGoods, Similar, SimilarPair

Entry = tuple[str, int, float]
"""(other product, distinct co-buyers, cosine)"""
Lists = dict[str, list[Entry]]
"""product -> its most similar products, most similar first (ties by product code)."""
CoBuyers = tuple[str, str, int, int, int]
"""(product, other product, customers who kept both, the product's buyers, the other's buyers)"""
GoodsBuyers = dict[str, list[str]]
"""good -> who keeps some of it (a good nobody keeps is absent)."""


def rank(entry: Entry) -> tuple[float, str]:
    """The order of a list: most similar first, ties by product code."""
    return (-entry[2], entry[0])


@dataclass(frozen=True, slots=True)
class ComputedRows:
    lists: Lists
    """The top list of every product asked for (empty: bought with nothing)."""
    crossing: Lists
    """For each product outside those rows bought with one of them: its entries for them."""


def computed_rows(
    co_buyers: Iterable[CoBuyers], rows: Collection[str], neighbours: int, crossing: bool
) -> ComputedRows:
    """The `rows` products' top `neighbours` lists from `co_buyers`: for each of them, every
    other good kept by one of its buyers, with the distinct customers who kept both and both
    goods' numbers of buyers (all of them). With `crossing`, also the rows' entries seen from
    the other products' side (cosine is symmetric). The arithmetic is `models.cosine_blocks`'s
    (co / sqrt(n_a x n_b) in float64) and ties go by product code, as `models.best_per_row`
    orders its columns, so the lists are bit for bit those of a whole recomputation."""
    found = list(co_buyers)
    lists: Lists = {product: [] for product in rows}
    across: Lists = {}
    if not found:
        return ComputedRows(lists, across)
    products, others, co, product_buyers, other_buyers = zip(*found, strict=True)
    similarity = np.asarray(co, dtype=np.float64) / np.sqrt(
        np.maximum(np.asarray(product_buyers, dtype=np.float64), 1.0)
        * np.maximum(np.asarray(other_buyers, dtype=np.float64), 1.0)
    )
    entries = sorted(
        zip(products, others, co, similarity.tolist(), strict=True),
        key=lambda entry: (entry[0], -entry[3], entry[1]),
    )
    for product, other, shared, cosine in entries:
        row = lists[product]
        if len(row) < neighbours:
            row.append((other, shared, cosine))
        if crossing and other not in lists:
            across.setdefault(other, []).append((product, shared, cosine))
    return ComputedRows(lists, across)


def lists_to_merge(
    boundaries: Mapping[str, Entry], naming: Collection[str], marked: ComputedRows
) -> list[str]:
    """Which products outside the marked rows may get a new list: those whose stored list names
    a marked product, is complete (no entry in `boundaries`, the last entry of each list that
    may be cut off) or would let in one of their new entries (ranked before its last). The other
    lists stay as they are: their entries did not change and the new ones rank after all of
    them."""
    return sorted(
        product
        for product in {*marked.crossing, *naming} - set(marked.lists)
        if product in naming
        or product not in boundaries
        or any(rank(entry) < rank(boundaries[product]) for entry in marked.crossing[product])
    )


@dataclass(frozen=True, slots=True)
class Merged:
    lists: Lists
    """New lists of the products the merge could settle."""
    unsettled: list[str]
    """Products whose new list needs entries their stored list did not keep: compute in full."""


def merged_lists(
    stored: Mapping[str, list[Entry]],
    products: Iterable[str],
    marked: ComputedRows,
    served: int,
    capacity: int,
) -> Merged:
    """New lists of `products` (outside the marked rows): the stored list without the marked
    products, plus their new entries, trimmed to `capacity`. A list of `served` entries or more
    may hide entries ranked after its last one, which did not change (neither product was
    marked): the new list keeps only what ranks no lower than that last entry, and is unsettled
    when that leaves fewer than `served`. A shorter list is complete: everything is known."""
    lists: Lists = {}
    unsettled: list[str] = []
    for product in products:
        old = sorted(stored.get(product, []), key=rank)
        candidates = sorted(
            [entry for entry in old if entry[0] not in marked.lists]
            + marked.crossing.get(product, []),
            key=rank,
        )
        if len(old) >= served:
            last = rank(old[-1])
            candidates = [entry for entry in candidates if rank(entry) <= last]
            if len(candidates) < served:
                unsettled.append(product)
                continue
        lists[product] = candidates[:capacity]
    return Merged(lists, unsettled)


def pairs(lists: Mapping[str, list[Entry]]) -> dict[SimilarPair, Similar]:
    """Lists as the (product, other product) -> (co-buyers, cosine) rows the service stores."""
    return {
        (product, other): (co, similarity)
        for product, entries in lists.items()
        for other, co, similarity in entries
    }


@dataclass(frozen=True, slots=True)
class KeptBuyers:
    """Who kept each good, as the neighbour job last read it: what a whole-catalogue run computes
    every list from, kept by the worker so that the next run reads only the goods marked since.
    Customers are numbered; one who keeps nothing any more is dropped and their number goes to
    the next new customer, so what is kept grows with who keeps goods, not with every customer
    ever read. Co-buyer counts, hence the lists, do not depend on the numbering."""

    customers: Mapping[str, int]
    """customer -> their number, for each customer who keeps some good."""
    goods: Mapping[str, npt.NDArray[np.intp]]
    """good -> the numbers of its buyers; a good nobody keeps is absent."""
    held: npt.NDArray[np.intp]
    """number -> how many goods its customer keeps; 0: the number is free."""


def kept_buyers(kept: KeptGoods) -> KeptBuyers:
    """Every pair of `kept`, by good."""
    order = np.argsort(kept.goods, kind="stable")
    counts = np.bincount(kept.goods, minlength=len(kept.products))
    columns = np.split(kept.buyers[order], np.cumsum(counts)[:-1])
    held = np.bincount(kept.buyers, minlength=len(kept.customers))
    return KeptBuyers(
        {
            customer: number
            for number, (customer, goods) in enumerate(
                zip(kept.customers, held.tolist(), strict=True)
            )
            if goods
        },
        {
            product: column
            for product, column in zip(kept.products, columns, strict=True)
            if len(column)
        },
        held,
    )


def with_buyers(
    kept: KeptBuyers, read: Mapping[str, Sequence[str]], goods: Iterable[str]
) -> KeptBuyers:
    """`kept` with the buyers of `goods` replaced by those `read` (a good of `goods` not read is
    kept by nobody now). New customers take the free numbers first, then new ones; a customer
    left keeping nothing is dropped."""
    customers = dict(kept.customers)
    columns = dict(kept.goods)
    gone = [columns.pop(good) for good in goods if good in columns]
    new = list(dict.fromkeys(c for buyers in read.values() for c in buyers if c not in customers))
    free = np.flatnonzero(kept.held == 0)[: len(new)].tolist()
    added = len(new) - len(free)
    customers.update(zip(new, [*free, *range(len(kept.held), len(kept.held) + added)], strict=True))
    held = np.concatenate([kept.held, np.zeros(added, dtype=np.intp)])
    for column in gone:
        held[column] -= 1  # a good's buyers are distinct
    for good, buyers in read.items():
        columns[good] = np.fromiter(
            (customers[c] for c in buyers), dtype=np.intp, count=len(buyers)
        )
        held[columns[good]] += 1
    left = np.concatenate(gone) if gone else np.empty(0, dtype=np.intp)
    dropped = set(left[held[left] == 0].tolist())
    if dropped:
        customers = {c: number for c, number in customers.items() if number not in dropped}
    return KeptBuyers(customers, columns, held)


def kept_goods(kept: KeptBuyers) -> KeptGoods:
    """The pairs of `kept` numbered as `models.kept_similar_products` reads them: goods in
    code-point order (which breaks ties between similar goods); a free number's customer is ""."""
    products = sorted(kept.goods)
    columns = [kept.goods[product] for product in products]
    customers = [""] * len(kept.held)
    for customer, number in kept.customers.items():
        customers[number] = customer
    return KeptGoods(
        products,
        np.concatenate(columns) if columns else np.empty(0, dtype=np.intp),
        np.repeat(np.arange(len(products)), [len(column) for column in columns]),
        customers,
    )
