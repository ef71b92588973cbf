DROP INDEX CONCURRENTLY IF EXISTS webhook_events_received_all_idx;
