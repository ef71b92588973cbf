-- When the task's current idempotency key was first sent (set by the claim that sends it,
-- cleared by a new key generation): Stripe keeps a key for 24 hours, so a key older than
-- 23 hours is replaced (after a reconcile) before it is sent again.
ALTER TABLE sync_tasks ADD COLUMN key_sent_at timestamptz;
