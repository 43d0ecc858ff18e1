-- The ids of the events a stalling test worker folded (no key: a double fold shows as a duplicate).
CREATE TABLE folded (id text NOT NULL);
