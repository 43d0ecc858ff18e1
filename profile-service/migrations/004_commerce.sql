-- Commerce: orders with their lines, refunds and cancellations, one row per event, so that every
-- figure is derived at read time from facts that fold in any order (docs/decisions.md).
-- An id placed twice keeps its first placement by (event time, source, event id): the guard of
-- each upsert applies that order, so the kept row is the same whatever the batches.
CREATE TABLE orders (
    customer_id  text           NOT NULL,
    order_id     text           NOT NULL,
    source       text           NOT NULL,
    event_id     text           NOT NULL,
    placed_at    timestamptz    NOT NULL,
    channel      text           NOT NULL,
    currency     text           NOT NULL,
    amount       numeric(28, 4) NOT NULL,
    line_count   integer        NOT NULL,
    items        bigint         NOT NULL,
    PRIMARY KEY (customer_id, order_id)
);
CREATE INDEX orders_by_month ON orders (placed_at);

-- Lines of every placement (a repeated order id's lines stay too; the order row names the kept
-- placement's event, which selects its lines).
CREATE TABLE order_lines (
    customer_id text           NOT NULL,
    order_id    text           NOT NULL,
    source      text           NOT NULL,
    event_id    text           NOT NULL,
    line_no     integer        NOT NULL,
    product_id  text           NOT NULL,
    description text,
    quantity    integer        NOT NULL,
    unit_price  numeric(11, 4) NOT NULL,
    PRIMARY KEY (customer_id, order_id, source, event_id, line_no)
);

-- Refunds and returns, whole or partial; order_id names the order when the event does.
CREATE TABLE refunds (
    customer_id text           NOT NULL,
    refund_id   text           NOT NULL,
    source      text           NOT NULL,
    event_id    text           NOT NULL,
    refunded_at timestamptz    NOT NULL,
    order_id    text,
    currency    text           NOT NULL,
    amount      numeric(28, 4) NOT NULL,
    line_count  integer        NOT NULL,
    items       bigint         NOT NULL,
    reason      text,
    PRIMARY KEY (customer_id, refund_id)
);
CREATE INDEX refunds_by_order ON refunds (customer_id, order_id);

CREATE TABLE order_cancellations (
    customer_id  text        NOT NULL,
    order_id     text        NOT NULL,
    source       text        NOT NULL,
    event_id     text        NOT NULL,
    cancelled_at timestamptz NOT NULL,
    reason       text,
    PRIMARY KEY (customer_id, order_id)
);

-- Every movement of money, signed, in its own currency: orders that are not cancelled, and
-- refunds that are not of a cancelled order, dated when refunded, on the channel of the order
-- they name (NULL when they name none that is known in that currency).
CREATE VIEW revenue_facts AS
SELECT o.customer_id, o.placed_at AS at, o.channel, o.currency, 1 AS orders, o.amount AS revenue
FROM orders o
WHERE NOT EXISTS (
    SELECT 1 FROM order_cancellations c
    WHERE c.customer_id = o.customer_id AND c.order_id = o.order_id
)
UNION ALL
SELECT r.customer_id, r.refunded_at, o.channel, r.currency, 0, -r.amount
FROM refunds r
LEFT JOIN orders o
    ON o.customer_id = r.customer_id AND o.order_id = r.order_id AND o.currency = r.currency
WHERE NOT EXISTS (
    SELECT 1 FROM order_cancellations c
    WHERE c.customer_id = r.customer_id AND c.order_id = r.order_id
);

-- Per customer and currency (amounts in different currencies are never added together).
CREATE VIEW customer_currency_totals AS
SELECT customer_id, currency,
       sum(orders)::bigint                                     AS orders,
       coalesce(sum(revenue) FILTER (WHERE orders = 1), 0)     AS gross_revenue,
       coalesce(-sum(revenue) FILTER (WHERE orders = 0), 0)    AS refunded,
       sum(revenue)                                            AS net_revenue,
       min(at) FILTER (WHERE orders = 1)                       AS first_purchase_at,
       max(at) FILTER (WHERE orders = 1)                       AS last_purchase_at
FROM revenue_facts
GROUP BY customer_id, currency;
