ALTER TABLE sync_tasks DROP COLUMN key_sent_at;
