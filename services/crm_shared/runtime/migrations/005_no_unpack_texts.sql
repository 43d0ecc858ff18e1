-- A database that ran 004_unpack_texts (a SQL function that split packed texts) drops it: the
-- statements now split them with the expression crm_shared.runtime.packed.unpacked, which the
-- planner folds. Through the function, a custom plan ran the SQL-function executor for each
-- column of each statement (docs/decisions.md, "Batches sent as packed texts and microseconds").
DROP FUNCTION IF EXISTS unpack_texts(text, text, text);
