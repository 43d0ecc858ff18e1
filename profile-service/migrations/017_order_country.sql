-- Where each order was sold or shipped to (OrderPlaced.country, ISO 3166-1 alpha-2; NULL when the
-- event names none): a customer's favourite countries are counted from their orders.
ALTER TABLE orders ADD COLUMN country text;
