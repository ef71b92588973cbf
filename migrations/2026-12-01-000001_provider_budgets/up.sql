-- One rate budget per provider account, shared by every process that calls it. Permits
-- are slots in time (the generic cell rate algorithm): a process reserves a slice of
-- slots by moving `next_free` forward, and a 429 moves `paused_until` for everyone.
-- Background work takes slots only when live traffic has none reserved ahead
-- (`live_until`), or when its floor is due (`floor_next`), so it always progresses.
CREATE TABLE provider_budgets (
    account      text PRIMARY KEY,
    next_free    timestamptz NOT NULL DEFAULT clock_timestamp(),
    paused_until timestamptz NOT NULL DEFAULT '-infinity',
    live_until   timestamptz NOT NULL DEFAULT '-infinity',
    floor_next   timestamptz NOT NULL DEFAULT '-infinity',
    -- Slices reserved so far: what the budget costs PostgreSQL, one UPDATE each.
    reservations bigint NOT NULL DEFAULT 0
);
