-- Plans are narrow: a campaign's rows are written with no content (body_text NULL) and rendered
-- from the campaign's templates when the sender claims them (broadcast_service.rendering); a
-- ready-made message (no campaign to render from) keeps its content.
ALTER TABLE outbound_messages ALTER COLUMN body_text DROP NOT NULL,
    ADD CONSTRAINT outbound_messages_content CHECK (body_text IS NOT NULL OR campaign_id IS NOT NULL);

-- A due campaign is 'planning' until its planning job has decided every recipient, chunk by
-- chunk, each chunk committed with its rows and this cursor: a crash resumes after the last
-- recipient committed, so nobody is planned twice.
ALTER TABLE campaigns DROP CONSTRAINT campaigns_state_check,
    ADD CONSTRAINT campaigns_state_check
        CHECK (state IN ('scheduled', 'planning', 'planned', 'cancelled')),
    ADD COLUMN plan_cursor text,                      -- the last recipient decided (id order)
    ADD COLUMN plan_messages bigint NOT NULL DEFAULT 0;  -- rows planned so far (the throttle's n)
CREATE INDEX campaigns_planning ON campaigns (send_at) WHERE state = 'planning';
