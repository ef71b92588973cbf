ALTER TABLE sync_tasks DROP COLUMN claim_token;
