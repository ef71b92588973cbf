-- Replaced by sync_tasks_open_customer_idx.
DROP INDEX CONCURRENTLY IF EXISTS sync_tasks_open_idx;
