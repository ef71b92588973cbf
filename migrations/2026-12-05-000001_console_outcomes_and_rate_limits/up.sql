-- What applying each event did, for the console's event listing (`GET /api/v1/events`).
-- A narrow table of its own rather than a column: the outcome is known only after the
-- event row is stored (its insert is what refuses a redelivery), and updating that wide
-- row in the same transaction wrote it twice with all its index entries, which halved the
-- webhook ingest. Events stored before this migration have no row: "not recorded".
CREATE TABLE webhook_event_outcomes (
    id      text PRIMARY KEY,
    outcome text NOT NULL
);

-- The provider's 429s, counted where every consumer sees them: the console's overview
-- shows the last one and how many there were.
ALTER TABLE provider_budgets
    ADD COLUMN rate_limited_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_rate_limited_at timestamptz;
