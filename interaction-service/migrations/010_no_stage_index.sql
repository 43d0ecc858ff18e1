-- No statement selects journeys by stage: the stage counts (the journey-stage gauge and route)
-- aggregate the whole table, which PostgreSQL reads in one pass, and the inactivity job finds its
-- journeys through journeys_inactivity. Every stage change wrote this index.
DROP INDEX IF EXISTS journeys_stage;
