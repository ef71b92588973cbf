-- Retention's path to the oldest events, however they came (the webhook index covers only
-- deliveries). Built without blocking writes, as the tasks' one.
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_events_received_all_idx
    ON webhook_events (received_at, id);
