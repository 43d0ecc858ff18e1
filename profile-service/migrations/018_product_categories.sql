-- Each product's category from crm.catalogue (crm.product.catalogued.v1): the latest record by
-- (event time, source, event id) wins, so a late, older record changes nothing. Read for the
-- favourite categories and for segment rules over the categories a customer bought.
CREATE TABLE product_categories (
    product_id  text        PRIMARY KEY,
    category    text,
    recorded_at timestamptz NOT NULL,
    source      text        NOT NULL,
    event_id    text        NOT NULL
);
CREATE INDEX product_categories_by_category ON product_categories (category);
