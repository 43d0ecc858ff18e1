-- Each customer's list is published as crm.recommendations.refreshed.v1 whenever it changes, and
-- honours their consent to personalisation (docs/decisions.md, "Published lists and consent to
-- personalisation").

-- When a product was first sold (event time of its earliest purchase): the catalogue's new
-- arrivals, offered as "new products" beside the picks.
ALTER TABLE products ADD COLUMN first_sold_at timestamptz;
UPDATE products p SET first_sold_at = f.first
FROM (SELECT product_id, min(first_bought_at) AS first FROM customer_products GROUP BY 1) f
WHERE p.product_id = f.product_id;
CREATE INDEX products_newest ON products (first_sold_at DESC, product_id) WHERE goods;

-- The latest consent decision for the purpose personalisation (v2, and v1 read as v2), last
-- writer wins by (decided_at, source, event_id) as in the broadcast service.
CREATE TABLE personalisation_consents (
    customer_id text        PRIMARY KEY,
    state       text        NOT NULL CHECK (state IN ('granted', 'pending', 'denied', 'revoked')),
    decided_at  timestamptz NOT NULL,
    source      text        NOT NULL,
    event_id    text        NOT NULL
);

-- Whether a customer's stored picks were computed from their own data (false: popular goods,
-- with or without consent).
ALTER TABLE customer_picks ADD COLUMN personalised boolean NOT NULL DEFAULT true;

-- The list last published for each customer: its per-customer version counter and what it
-- named (personalised or not, the picks' and new products' ids, in order), so that a list is
-- published again only when that changes.
CREATE TABLE published_lists (
    customer_id  text        PRIMARY KEY,
    version      bigint      NOT NULL,
    signature    text        NOT NULL,
    published_at timestamptz NOT NULL
);
