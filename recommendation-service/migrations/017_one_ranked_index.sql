-- Every reader of the similar products' ranking now breaks ties by code point (COLLATE "C"), the
-- order of similar_products_ranked_by_code; the same ranking under the database's collation is
-- no longer read. One index less to maintain on the table the neighbour job rewrites most (its
-- updates change `similarity`, so none of them is HOT).
DROP INDEX IF EXISTS similar_products_ranked;
