-- What applying each event did, for the console's event listing (`GET /api/v1/events`).
-- Rows stored before this migration keep NULL: their outcome was not recorded.
ALTER TABLE webhook_events ADD COLUMN outcome text;

-- The provider's 429s, counted where every consumer sees them: the console's overview
-- shows the last one and how many there were.
ALTER TABLE provider_budgets
    ADD COLUMN rate_limited_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_rate_limited_at timestamptz;
