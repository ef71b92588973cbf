-- Retention's path to the succeeded tasks it may remove, oldest first. Built without
-- blocking writes, so a deployment with years of tasks keeps taking changes meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sync_tasks_succeeded_idx ON sync_tasks (completed_at)
    WHERE status = 'succeeded';
