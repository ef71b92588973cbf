-- An import decides most staged customers in the walk's own step (those no later page
-- can change: linked, carrying our metadata, or with no local customer of their email);
-- the rest wait for the walk's end, found by this index.
ALTER TABLE sync_job_objects ADD COLUMN decided boolean NOT NULL DEFAULT false;
CREATE INDEX sync_job_objects_undecided_idx ON sync_job_objects (job_id, external_id)
    WHERE NOT decided;
