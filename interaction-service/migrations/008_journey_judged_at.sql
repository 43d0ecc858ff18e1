-- The latest time a journey's stage was judged at (journey.Journey.judged_at): a late, older
-- event is judged at it, so the stage never goes back and a rebuild ends at the same stage.
ALTER TABLE journeys ADD COLUMN judged_at timestamptz;
