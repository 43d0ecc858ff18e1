"""The neighbour job's incremental step, pure: which similar-product lists a set of marked
products (goods that gained or lost a buyer) can change, and their new lists, equal to what a
recomputation of the whole catalogue (`models.similar_products`) gives.

Cosine is co(X, Y) / sqrt(n_X n_Y). When X gains or loses a buyer, n_X and co(X, Y) for the
goods Y in that customer's basket change, so X's whole row changes and, in the row of every Y
bought with X (or that listed X), only the entry for X changes. So the marked products' rows are
computed in full from their buyers' baskets, and each other affected product's stored top list
is merged with its new entries for the marked products, when they can change it at all. A
stored list that was full hides the entries ranked after its last one; when the merge needs one
of those (a marked product left the list), that product's row is computed in full as well.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from recommendation_service.models import Similar, SimilarPair, best_per_row, cosine_blocks

Entry = tuple[str, int, float]
"""(other product, distinct co-buyers, cosine)"""
Lists = dict[str, list[Entry]]
"""product -> its most similar products, most similar first (ties by product code)."""
KeptGood = tuple[str, str, int]
"""(customer, a good they kept, the good's number of buyers)"""


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
    kept: Iterable[KeptGood], rows: Collection[str], neighbours: int, crossing: bool
) -> ComputedRows:
    """The `rows` products' top `neighbours` lists from `kept`: every good kept by every customer
    who kept one of them, with each good's number of buyers (all of them, not only these
    customers). With `crossing`, also the rows' entries seen from the other products' side
    (cosine is symmetric). The arithmetic is `models.nearest_neighbours`'s, so the values are
    bit for bit those of a whole recomputation."""
    triples = list(kept)
    customers: dict[str, int] = {}
    for customer, _, _ in triples:
        customers.setdefault(customer, len(customers))
    buyers_of = {product: buyers for _, product, buyers in triples}
    products = sorted(buyers_of)
    columns = {product: n for n, product in enumerate(products)}
    items = sparse.csr_matrix(
        (
            np.ones(len(triples)),
            ([columns[p] for _, p, _ in triples], [customers[c] for c, _, _ in triples]),
        ),
        shape=(len(products), len(customers)),
    )
    buyers = np.maximum(np.array([buyers_of[p] for p in products], dtype=np.float64), 1.0)
    wanted = np.array(sorted(columns[p] for p in rows if p in columns), dtype=np.intp)
    outside = np.ones(len(products), dtype=bool)
    outside[wanted] = False
    lists: Lists = {product: [] for product in rows}
    across: Lists = {}
    for block in cosine_blocks(items, buyers, wanted):
        best_rows, best_columns = best_per_row(block.similarity, neighbours)
        for row, column in zip(best_rows.tolist(), best_columns.tolist(), strict=True):
            lists[products[block.rows[row]]].append(
                (
                    products[column],
                    int(block.co[row, column]),
                    float(block.similarity[row, column]),
                )
            )
        if crossing:
            cross_rows, cross_columns = np.nonzero((block.co > 0) & outside[None, :])
            for row, column in zip(cross_rows.tolist(), cross_columns.tolist(), strict=True):
                across.setdefault(products[column], []).append(
                    (
                        products[block.rows[row]],
                        int(block.co[row, column]),
                        float(block.similarity[row, column]),
                    )
                )
    return ComputedRows(lists, across)


def lists_to_merge(
    boundaries: Mapping[str, Entry], naming: Collection[str], marked: ComputedRows
) -> list[str]:
    """Which products outside the marked rows may get a new list: those whose stored list names
    a marked product, is not full (no entry in `boundaries`, each full list's last entry) or
    would let in one of their new entries (ranked before its last). The other lists stay as they
    are: their entries did not change and the new ones rank after all of them."""
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
    neighbours: int,
) -> Merged:
    """New lists of `products` (outside the marked rows): the stored list without the marked
    products, plus their new entries, trimmed. Entries the stored list left out rank after its
    last one and did not change (neither product was marked), so the merge is exact as long as
    the new list is filled from entries ranked no lower than that; otherwise unsettled."""
    lists: Lists = {}
    unsettled: list[str] = []
    for product in products:
        old = sorted(stored.get(product, []), key=rank)
        candidates = sorted(
            [entry for entry in old if entry[0] not in marked.lists]
            + marked.crossing.get(product, []),
            key=rank,
        )
        if len(old) >= neighbours:
            last = rank(old[-1])
            if sum(1 for entry in candidates if rank(entry) <= last) < neighbours:
                unsettled.append(product)
                continue
        lists[product] = candidates[:neighbours]
    return Merged(lists, unsettled)


def pairs(lists: Mapping[str, list[Entry]]) -> dict[SimilarPair, Similar]:
    """Lists as the (product, other product) -> (co-buyers, cosine) rows the service stores."""
    return {
        (product, other): (co, similarity)
        for product, entries in lists.items()
        for other, co, similarity in entries
    }
