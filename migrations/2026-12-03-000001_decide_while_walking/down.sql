DROP INDEX sync_job_objects_undecided_idx;
ALTER TABLE sync_job_objects DROP COLUMN decided;
