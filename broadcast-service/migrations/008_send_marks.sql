-- The ledger marks each message started just before its adapter is called, not a whole batch at
-- claim time, so that a sender that dies leaves ambiguous only the messages on the wire.
-- A claimed row is 'sending' with started_at NULL; its start mark sets started_at (and counts
-- the attempt). When its lease ends, a row never started goes back to 'planned'; a started one
-- is resent only where the provider dedupes (webhooks), an e-mail is given up as interrupted.
ALTER TABLE outbound_messages ADD COLUMN started_at timestamptz;
-- Which sender holds the claim: a sender only starts and records messages it still holds, so
-- one that outlived its lease cannot send a message another sender has taken over.
ALTER TABLE outbound_messages ADD COLUMN claimed_by text;
