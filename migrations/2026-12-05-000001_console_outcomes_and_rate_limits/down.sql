ALTER TABLE provider_budgets
    DROP COLUMN last_rate_limited_at,
    DROP COLUMN rate_limited_total;
DROP TABLE webhook_event_outcomes;
