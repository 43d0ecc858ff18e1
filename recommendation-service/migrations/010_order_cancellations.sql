-- Order cancellations (docs/decisions.md, "Cancelled orders count as not bought"): every order,
-- and every refund naming an order, is kept as folded until the order is cancelled, so that a
-- cancellation folded after them can take back what they counted; cancelled orders are kept so
-- that an order or refund folded after its cancellation counts for nothing.
CREATE TABLE order_entries (
    customer_id text        NOT NULL,
    order_id    text        NOT NULL,
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    refund      boolean     NOT NULL,
    at          timestamptz NOT NULL,
    country     text,
    segments    jsonb       NOT NULL,  -- the customer's segments at its fold: ["vip", ...]
    lines       jsonb       NOT NULL,  -- [[product_id, units], ...]
    PRIMARY KEY (customer_id, order_id, source, event_id)
);

CREATE TABLE cancelled_orders (
    customer_id text NOT NULL,
    order_id    text NOT NULL,
    PRIMARY KEY (customer_id, order_id)
);
