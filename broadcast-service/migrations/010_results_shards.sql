-- A campaign's counts were one row per channel and outcome: every sender's group commit
-- updated the same row and so waited, from its count to its commit, for the other senders'
-- commits (two senders were no faster than one). Each database session now counts into a shard
-- of its own (its backend pid modulo 16) and readers sum the shards.
ALTER TABLE campaign_results ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE campaign_results DROP CONSTRAINT campaign_results_pkey;
ALTER TABLE campaign_results ADD PRIMARY KEY (campaign_id, channel, outcome, shard);
