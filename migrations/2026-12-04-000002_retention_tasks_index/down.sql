DROP INDEX CONCURRENTLY IF EXISTS sync_tasks_succeeded_idx;
