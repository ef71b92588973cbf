CREATE INDEX CONCURRENTLY IF NOT EXISTS sync_tasks_open_idx ON sync_tasks (provider, customer_id, seq)
    WHERE status IN ('pending', 'in_flight');
