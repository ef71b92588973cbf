-- Each claim of a task gets a token of its own; an outcome (succeeded, retry, dead,
-- released) and a lease renewal apply only under the current token, so a consumer whose
-- lease ran out during a slow call cannot overwrite what the consumer that took the task
-- over recorded.
ALTER TABLE sync_tasks ADD COLUMN claim_token uuid;
