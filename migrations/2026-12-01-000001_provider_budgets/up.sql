-- One rate budget per provider account, shared by every process that calls it. Permits
-- are slots in time (the generic cell rate algorithm): a process reserves a slice of
-- slots by moving `next_free` forward, and a 429 moves `paused_until` for everyone.
CREATE TABLE provider_budgets (
    account      text PRIMARY KEY,
    next_free    timestamptz NOT NULL DEFAULT clock_timestamp(),
    paused_until timestamptz NOT NULL DEFAULT '-infinity'
);
