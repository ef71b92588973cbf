-- Our API's own idempotency (README "Retrying a request safely"): the first response to
-- a POST, PATCH or DELETE carrying an `Idempotency-Key`, per key and API token, kept for
-- 24 hours and replayed to a retry. `status` is NULL while the first request runs; a
-- process that died meanwhile leaves the row to be taken over after `running_until`.
CREATE TABLE api_idempotency (
    token_hash bytea NOT NULL,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash bytea NOT NULL,
    status smallint,
    content_type text,
    body bytea,
    running_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token_hash, key)
);

-- The hourly prune finds what is older than 24 hours.
CREATE INDEX api_idempotency_created_at ON api_idempotency (created_at);
