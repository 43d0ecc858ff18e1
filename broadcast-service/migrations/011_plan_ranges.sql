-- A campaign's plan is cut, when its planning starts, into ranges of its recipients in customer
-- id order, a chunk each: connections (and worker replicas) plan ranges at once, in any order,
-- each range once, its chunk and its flag committed together; a crash resumes with the ranges
-- not planned yet. This replaces the one cursor, which made chunks commit one after another.
CREATE TABLE plan_ranges (
    campaign_id text    NOT NULL,
    number      integer NOT NULL,  -- its place in id order
    after       text,              -- its recipients come after this id (NULL: from the first)
    last        text,              -- up to and including this id (NULL: to the last)
    planned     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (campaign_id, number)
);
-- A plan begun under the cursor keeps what it planned: one planned range up to its cursor; the
-- rest is cut after it when planning resumes.
INSERT INTO plan_ranges (campaign_id, number, after, last, planned)
SELECT campaign_id, 0, NULL, plan_cursor, true
FROM campaigns
WHERE state = 'planning' AND plan_cursor IS NOT NULL;
ALTER TABLE campaigns DROP COLUMN plan_cursor;
