DROP INDEX webhook_events_webhook_received_idx;
ALTER TABLE webhook_events DROP COLUMN source;
DROP INDEX customers_email_lower_idx;
DROP TABLE sync_cursors;
DROP TABLE sync_job_findings;
DROP TABLE sync_job_objects;
DROP TABLE sync_jobs;
