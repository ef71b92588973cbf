-- A customer's unfinished tasks, by a predicate the provider-wide index (status IN
-- ('pending', 'in_flight')) does not imply. The claim's "oldest unfinished task of this
-- customer" probe names this predicate, so the planner can only serve it from here.
-- With the old index both matched; on a large table whose statistics still said "no open
-- tasks" (as after any burst into a table of millions), the planner probed with the
-- provider-wide one, filtering by customer: quadratic in the open tasks (a claim over
-- 1,000 due tasks took 97 s).
CREATE INDEX CONCURRENTLY IF NOT EXISTS sync_tasks_open_customer_idx
    ON sync_tasks (provider, customer_id, seq)
    WHERE status <> 'succeeded' AND status <> 'dead';
